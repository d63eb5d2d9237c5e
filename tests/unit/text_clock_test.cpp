// Text checks at the edge, and the clock's UTC helpers.
#include <cstdint>
#include <gtest/gtest.h>

#include "core/clock.hpp"
#include "core/text.hpp"

using namespace spillway;

TEST(Text, Utf8IsCheckedStrictly) {
  EXPECT_TRUE(IsValidUtf8("plain, \xC3\xA9t\xC3\xA9, \xE2\x82\xAC, \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // a surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // cut short
  EXPECT_TRUE(IsCleanText("us-east"));
  EXPECT_FALSE(IsCleanText(std::string("r1\0zz", 5)));
  EXPECT_FALSE(IsCleanText("a\nb"));
  EXPECT_FALSE(IsCleanText("\xC2\x85"));  // a C1 control
  EXPECT_EQ(ScrubUtf8("a\xff" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_TRUE(HasVisibleCharacter(" x "));
  EXPECT_FALSE(HasVisibleCharacter(" \t\xC2\xA0\xE3\x80\x80\xE2\x80\x8B"));
}

TEST(Clock, FakeClockMovesOnlyWhenTold) {
  FakeClock c(FromEpochMs(1000));
  EXPECT_EQ(EpochMs(c.Now()), 1000);
  c.Advance(std::chrono::seconds(2));
  EXPECT_EQ(EpochMs(c.Now()), 3000);
}

TEST(Clock, FormatTimeWritesEveryFieldAndParsesBack) {
  EXPECT_EQ(FormatTime(FromEpochMs(0)), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(FormatTime(FromEpochMs(-1)), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(FormatTime(FromEpochMs(253402300799999)), "9999-12-31T23:59:59.999Z");
  EXPECT_EQ(FormatTime(FromEpochMs(951782400007)), "2000-02-29T00:00:00.007Z");
  // A spread of instants from 1970 to 2100, each to the millisecond.
  std::uint64_t x = 88172645463325252ULL;
  for (int i = 0; i < 20000; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const auto t = FromEpochMs(static_cast<std::int64_t>(x % 4102444800000ULL));
    const std::string text = FormatTime(t);
    ASSERT_EQ(text.size(), 24u) << text;
    ASSERT_EQ(ParseTime(text), t) << text;
  }
}

TEST(Clock, MonthsAndRfc3339) {
  const auto t = ParseTime("2024-02-29T23:59:59.999Z");
  ASSERT_TRUE(t);
  const Month m = MonthOf(*t);
  EXPECT_EQ(m.Label(), "2024-02");
  EXPECT_EQ(FormatTime(m.begin), "2024-02-01T00:00:00.000Z");
  EXPECT_EQ(FormatTime(m.end), "2024-03-01T00:00:00.000Z");
  EXPECT_EQ(FormatTime(MonthOf(*ParseTime("2026-12-31T10:00:00Z")).end), "2027-01-01T00:00:00.000Z");
  EXPECT_EQ(ParseMonth("2026-11")->Label(), "2026-11");
  EXPECT_FALSE(ParseMonth("2026-13"));
  EXPECT_FALSE(ParseMonth("2026-1"));
  EXPECT_FALSE(ParseTime("2026-11-26T10:00:00"));       // no zone
  EXPECT_FALSE(ParseTime("2026-11-26T10:00:00+01:00"));  // UTC only
  EXPECT_FALSE(ParseTime("2026-11-26T10:00:00Zjunk"));
  EXPECT_EQ(FormatTime(*ParseTime("2026-11-26T10:00:00.5Z")), "2026-11-26T10:00:00.500Z");
}
