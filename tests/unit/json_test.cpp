// Response bodies: doubles in plain decimal notation, everything else as Boost.JSON writes it.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <limits>

#include "core/json.hpp"

using spillway::ToJson;

TEST(ToJson, WritesDoublesInPlainNotation) {
  EXPECT_EQ(ToJson(boost::json::object{{"spare_fraction", 0.62}}), R"({"spare_fraction":0.62})");
  EXPECT_EQ(ToJson(boost::json::value(0.4375)), "0.4375");
  EXPECT_EQ(ToJson(boost::json::value(1.0)), "1.0");
  EXPECT_EQ(ToJson(boost::json::value(0.0)), "0.0");
  EXPECT_TRUE(boost::json::parse(ToJson(boost::json::value(1.0))).is_double());
  EXPECT_EQ(ToJson(boost::json::value(-2.5)), "-2.5");
  EXPECT_EQ(ToJson(boost::json::value(1e-6)), "0.000001");
  // Too long for plain notation: the exponent form, which parses back to the same number.
  EXPECT_EQ(boost::json::parse(ToJson(boost::json::value(1e300))).as_double(), 1e300);
  EXPECT_EQ(ToJson(boost::json::value(std::numeric_limits<double>::quiet_NaN())), "null");
  EXPECT_EQ(ToJson(boost::json::value(std::numeric_limits<double>::infinity())), "null");
}

TEST(ToJson, MatchesBoostJsonForEverythingElse) {
  const auto v = boost::json::parse(
      R"({"s":"a \"quoted\" \u0001 line\n","i":-42,"u":18446744073709551615,"b":true,"n":null,)"
      R"("a":[1,"two",{"x":[]}],"o":{},"e":[]})");
  EXPECT_EQ(ToJson(v), boost::json::serialize(v));
  EXPECT_EQ(boost::json::parse(ToJson(v)), v);
}
