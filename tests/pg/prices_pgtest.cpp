// The price book answers "the price in effect at t", as rating will ask per sample.
#include <gtest/gtest.h>

#include <thread>

#include "billing/prices.hpp"
#include "core/db.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using spillway::test::TestDb;
using namespace std::chrono_literals;

TEST(Prices, OnDemandPriceIsTheOneInEffectAtATime) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  const TimeMs t0 = *ParseTime("2026-10-01T00:00:00Z"), t1 = *ParseTime("2026-11-15T12:00:00Z");
  EXPECT_EQ(SeedPriceBook(*conn, {{"H100-80GB", 2'490'000}}, 100'000, t0), 2);  // the model's and storage's
  EXPECT_EQ(SeedPriceBook(*conn, {{"H100-80GB", 2'490'000}}, 100'000, t0 + 1h), 0);  // unchanged: nothing new
  {
    pqxx::work tx(*conn);
    EXPECT_TRUE(SchedulePrice(tx, {"H100-80GB", 2'990'000, t1}));  // as finance would
    EXPECT_FALSE(SchedulePrice(tx, {"H100-80GB", 3'000'000, t1}));  // one price a moment
    EXPECT_TRUE(SchedulePrice(tx, {"", 80'000, t1}));
    tx.commit();
  }
  // A restart with the config's (older) price changes nothing finance set; a new model is seeded.
  EXPECT_EQ(SeedPriceBook(*conn, {{"H100-80GB", 2'490'000}, {"A100-80GB", 1'290'000}}, 100'000, t1 + 1h), 1);
  pqxx::work tx(*conn);
  EXPECT_FALSE(OnDemandPriceAt(tx, "H100-80GB", t0 - 1ms));
  EXPECT_EQ(OnDemandPriceAt(tx, "H100-80GB", t0), 2'490'000);
  EXPECT_EQ(OnDemandPriceAt(tx, "H100-80GB", t1 - 1ms), 2'490'000);
  EXPECT_EQ(OnDemandPriceAt(tx, "H100-80GB", t1), 2'990'000);
  EXPECT_EQ(OnDemandPriceAt(tx, "H100-80GB", t1 + 2h), 2'990'000);
  EXPECT_FALSE(OnDemandPriceAt(tx, "A100-80GB", t1));
  EXPECT_EQ(OnDemandPriceAt(tx, "A100-80GB", t1 + 1h), 1'290'000);
  EXPECT_EQ(StoragePriceAt(tx, t1 - 1ms), 100'000);
  EXPECT_EQ(StoragePriceAt(tx, t1), 80'000);
  EXPECT_EQ(NextPrice(tx, "H100-80GB", t0)->price_micros, 2'990'000);
  EXPECT_EQ(NextPrice(tx, "H100-80GB", t0)->effective_from, t1);
  EXPECT_FALSE(NextPrice(tx, "H100-80GB", t1));
  EXPECT_EQ(NextPrice(tx, "", t0)->price_micros, 80'000);
  const auto book = PriceBook(tx);
  ASSERT_EQ(book.size(), 5u);
  EXPECT_EQ(book[0].gpu_model, "A100-80GB");
  EXPECT_TRUE(book[4].storage());
  // The book only grows: what invoices were rated against is never rewritten.
  EXPECT_THROW(tx.exec("UPDATE prices SET price_micros_per_gpu_hour = 1"), pqxx::sql_error);
}

TEST(Prices, SpotPriceIsTheOneInEffectAtATime) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  {
    pqxx::work tx(*conn);
    RecordSpotPrice(tx, {"us-east", "H100-80GB", 1'000'000, 2'490'000, 500'000, 1'000'000});
    tx.commit();
  }
  std::this_thread::sleep_for(5ms);
  {
    pqxx::work tx(*conn);
    RecordSpotPrice(tx, {"us-east", "H100-80GB", 1'200'000, 2'490'000, 400'000, 1'400'000});
    tx.commit();
  }
  pqxx::work tx(*conn);
  const auto history = SpotPriceHistory(tx, SpotHistoryQuery{.region = "us-east", .gpu_model = "H100-80GB", .limit = 10});
  ASSERT_EQ(history.size(), 2u);
  const TimeMs first = FromEpochMs(history[0].effective_from_us / 1000 + 1);  // a whole ms after it began
  const TimeMs second = FromEpochMs(history[1].effective_from_us / 1000 + 1);
  EXPECT_FALSE(SpotPriceAt(tx, "us-east", "H100-80GB", FromEpochMs(history[0].effective_from_us / 1000 - 1)));
  EXPECT_EQ(SpotPriceAt(tx, "us-east", "H100-80GB", first), 1'000'000);
  EXPECT_EQ(SpotPriceAt(tx, "us-east", "H100-80GB", second), 1'200'000);
  EXPECT_EQ(CurrentSpotPrice(tx, "us-east", "H100-80GB"), 1'200'000);
  EXPECT_FALSE(CurrentSpotPrice(tx, "us-west", "H100-80GB"));
  EXPECT_EQ(history[1].price.spare_fraction_ppm, 400'000);
}
