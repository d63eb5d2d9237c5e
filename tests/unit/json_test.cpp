// Response bodies: doubles in plain decimal notation, everything else as Boost.JSON writes it.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <limits>

#include "core/errors.hpp"
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

TEST(ParseJsonBody, RefusesDuplicateKeysAtAnyDepth) {
  using spillway::ParseJsonBody;
  EXPECT_THROW(ParseJsonBody(R"({"a":1,"a":2})"), spillway::MalformedJson);
  EXPECT_THROW(ParseJsonBody(R"({"x":[{"b":1,"b":1}]})"), spillway::MalformedJson);
  EXPECT_THROW(ParseJsonBody(R"({"a\u0062":1,"ab":2})"), spillway::MalformedJson);  // the same key, escaped
  EXPECT_THROW(ParseJsonBody(R"({"a":)"), spillway::MalformedJson);
  EXPECT_NO_THROW(ParseJsonBody(R"({"a":{"a":1},"b":[{"a":1},{"a":2}],"s":"\"a\",\"a\""})"));
  // Objects with many keys (the check switches to a hash set) and siblings that reuse a frame.
  std::string many = "{";
  for (int i = 0; i < 100; ++i) many += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
  EXPECT_NO_THROW(ParseJsonBody(many + "\"last\":0}"));
  EXPECT_THROW(ParseJsonBody(many + "\"k7\":0}"), spillway::MalformedJson);
  EXPECT_THROW(ParseJsonBody(R"([{"a":1,"b":2},{"b":1},{"c":1,"c\u0000":2,"c":3}])"), spillway::MalformedJson);
  EXPECT_NO_THROW(ParseJsonBody(R"([{"a":1,"b":2},{"b":1,"a":2},{"c":1,"c\u0000":2}])"));
}

TEST(CanonicalJson, IgnoresMemberOrderAndSpacing) {
  using spillway::CanonicalJson;
  const auto a = boost::json::parse(R"({"b":1,"a":{"y":[1,2],"x":"t"}})");
  const auto b = boost::json::parse(R"( { "a" : { "x" : "t", "y" : [ 1, 2 ] }, "b" : 1 } )");
  EXPECT_EQ(CanonicalJson(a), CanonicalJson(b));
  EXPECT_EQ(CanonicalJson(a), R"({"a":{"x":"t","y":[1,2]},"b":1})");
  EXPECT_NE(CanonicalJson(boost::json::parse("[1,2]")), CanonicalJson(boost::json::parse("[2,1]")));
}

TEST(ToJson, NeverWritesInvalidUtf8) {
  const std::string bad = "a\xff" "b\xc0\xaf";
  const std::string out = ToJson(boost::json::object{{"k", boost::json::string_view(bad)}});
  boost::system::error_code ec;
  boost::json::parse(out, ec);
  EXPECT_FALSE(ec) << out;
  EXPECT_EQ(out, "{\"k\":\"a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD\"}");
}
