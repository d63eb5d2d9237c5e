#include "core/duration.hpp"

#include <gtest/gtest.h>

using namespace spillway;

TEST(Duration, ParsesTheDocumentedUnits) {
  EXPECT_EQ(ParseDuration("500ms"), Millis(500));
  EXPECT_EQ(ParseDuration("10s"), Millis(10'000));
  EXPECT_EQ(ParseDuration("2m"), Millis(120'000));
  EXPECT_EQ(ParseDuration("1h"), Millis(3'600'000));
  EXPECT_EQ(ParseDuration("1m30s"), Millis(90'000));
  EXPECT_EQ(ParseDuration("0s"), Millis(0));
}

TEST(Duration, RejectsAnythingElse) {
  for (const char* bad : {"", "10", "s", "10 s", "-1s", "1.5s", "10sec", "1d", "99999999999999999999h"})
    EXPECT_FALSE(ParseDuration(bad)) << bad;
}

TEST(Duration, FormatsShortest) {
  EXPECT_EQ(FormatDuration(Millis(90'000)), "90s");
  EXPECT_EQ(FormatDuration(Millis(120'000)), "2m");
  EXPECT_EQ(FormatDuration(Millis(250)), "250ms");
  EXPECT_EQ(FormatDuration(Millis(7'200'000)), "2h");
}
