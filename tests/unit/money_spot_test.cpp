// Exact prices: money parsing and rounding, and the spot curve, smoothing and clamping pinned to
// the micro-dollar.
#include <gtest/gtest.h>

#include "billing/spot_curve.hpp"
#include "core/money.hpp"

using namespace spillway;

TEST(Money, ParsesDecimalStringsExactly) {
  EXPECT_EQ(ParseMicros("2.490000"), 2'490'000);
  EXPECT_EQ(ParseMicros("2.49"), 2'490'000);
  EXPECT_EQ(ParseMicros("0.000001"), 1);
  EXPECT_EQ(ParseMicros("12"), 12'000'000);
  for (const char* bad : {"", ".5", "1.", "-1", "1e3", "1.0000001", "abc", "1,5", " 1"}) EXPECT_FALSE(ParseMicros(bad)) << bad;
}

TEST(Money, FormatsRatesAndRoundsAmountsHalfEven) {
  EXPECT_EQ(FormatMicros(2'490'000), "2.490000");
  EXPECT_EQ(FormatMicros(1), "0.000001");
  EXPECT_EQ(FormatCents(12'345'000), "12.34");  // exactly half: to the even cent
  EXPECT_EQ(FormatCents(12'355'000), "12.36");
  EXPECT_EQ(FormatCents(12'345'001), "12.35");
  EXPECT_EQ(FormatCents(4'999), "0.00");
  EXPECT_EQ(FormatCents(5'000), "0.00");
  EXPECT_EQ(FormatCents(15'000), "0.02");
  EXPECT_EQ(FormatCents(-12'355'000), "-12.36");
}

TEST(SpotCurve, ParsesAndRejects) {
  std::string why;
  EXPECT_TRUE(SpotCurve::Parse("0:10,20:10,80:70,100:70", &why)) << why;
  EXPECT_TRUE(SpotCurve::Parse("0:0, 100:90", &why)) << why;
  EXPECT_FALSE(SpotCurve::Parse("10:10,100:70", &why));  // must start at 0
  EXPECT_FALSE(SpotCurve::Parse("0:10,80:70", &why));     // must end at 100
  EXPECT_FALSE(SpotCurve::Parse("0:10,50:20,50:30,100:40", &why));
  EXPECT_FALSE(SpotCurve::Parse("0:10,100:170", &why));
  EXPECT_FALSE(SpotCurve::Parse("0:10;100:70", &why));
  EXPECT_FALSE(SpotCurve::Parse("", &why));
}

TEST(SpotCurve, InterpolatesLinearlyInPpm) {
  const auto c = *SpotCurve::Parse("0:10,20:10,80:70,100:70", nullptr);
  EXPECT_EQ(c.DiscountPpm(0), 100'000);
  EXPECT_EQ(c.DiscountPpm(200'000), 100'000);
  EXPECT_EQ(c.DiscountPpm(500'000), 400'000);  // halfway from 20% to 80% spare: 40% off
  EXPECT_EQ(c.DiscountPpm(437'500), 337'500);  // 10% + 60% × (43.75 − 20) / 60
  EXPECT_EQ(c.DiscountPpm(800'000), 700'000);
  EXPECT_EQ(c.DiscountPpm(1'000'000), 700'000);
  EXPECT_EQ(c.DiscountPpm(333'333), 233'333);  // 100000 + 600000*133333/600000, floored
}

TEST(SpotPrice, TargetSmoothingAndClamping) {
  const auto curve = *SpotCurve::Parse("0:10,20:10,80:70,100:70", nullptr);
  const std::int64_t od = 2'490'000;
  EXPECT_EQ(SpotTarget(od, 1'000'000, curve), 747'000);    // idle pool: 70% off
  EXPECT_EQ(SpotTarget(od, 0, curve), 2'241'000);          // full pool: 10% off
  EXPECT_EQ(SpotTarget(od, 437'500, curve), 1'649'625);    // 7 of 16 GPUs spare
  EXPECT_EQ(SpotTarget(3'290'000, 500'000, curve), 1'974'000);

  const SpotPolicy policy{curve, 50, 100'000};
  EXPECT_EQ(NextSpotPrice(std::nullopt, 747'000, od, policy), 747'000);       // a new pool: the target at once
  EXPECT_EQ(NextSpotPrice(747'000, 1'649'625, od, policy), 1'198'313);        // half way, rounded half up
  EXPECT_EQ(NextSpotPrice(1'198'313, 1'649'625, od, policy), 1'423'969);
  EXPECT_EQ(NextSpotPrice(1'649'625, 747'000, od, policy), 1'198'312);        // down: -451312.5 rounds away from 0
  EXPECT_EQ(NextSpotPrice(1'000'000, 1'000'000, od, policy), 1'000'000);      // at the target: no change
  EXPECT_EQ(NextSpotPrice(std::nullopt, 50'000, od, policy), 100'000);        // never below the floor
  EXPECT_EQ(NextSpotPrice(2'400'000, 3'000'000, od, SpotPolicy{curve, 100, 100'000}), od);  // never above on-demand
  EXPECT_EQ(NextSpotPrice(std::nullopt, 50'000, 80'000, policy), 80'000);     // a floor above on-demand yields to it
  EXPECT_EQ(SpareFractionPpm(7, 16), 437'500);
  EXPECT_EQ(SpareFractionPpm(3, 0), 0);
  EXPECT_EQ(SpareFractionPpm(20, 16), 1'000'000);
}
