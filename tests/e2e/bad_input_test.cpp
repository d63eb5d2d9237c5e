// Bad bytes are 4xx, never 500, never echoed: every route of the route table, called by a key that
// may call it, with invalid UTF-8, NUL, control characters, boundary integers and garbage cursors
// in its path parameters, its query and its Idempotency-Key. Every answer is below 500 and its body
// is valid JSON; the server's log stays valid UTF-8 as well.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <fstream>
#include <sstream>

#include "apiserver/app.hpp"
#include "core/text.hpp"
#include "tests/e2e/fleet_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> kBadValues = {
    "%ff", "%C0%AF", "%00", "r1%00zz", "%ff%fe", "%ED%A0%80", "%1b%5b31m", "%0d%0aX-Injected:%201",
    "-9223372036854775808", "9223372036854775807", "9223372036854775808", "-1", "0", "99999999999999999999999",
    "1e309", "%E2%80%AE", "'%3B--", "", "ins_%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff%ff",
    std::string(300, 'a'), "2026-13-45T99:99:99Z", "9999-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z"};

const std::vector<std::string> kQueryNames = {"limit",  "cursor",    "state", "region", "gpu_model", "since",
                                              "market", "version",   "wait",  "status", "order",     "tenant_id",
                                              "host_id", "%ff",      "from",  "to"};

std::string Fill(const std::string& pattern, const std::string& value) {
  std::string out;
  for (const auto& seg : SplitPath(pattern)) {
    out += '/';
    out += seg.front() == '{' ? value : seg;
  }
  return out;
}

}  // namespace

class BadInput : public FleetTest {};

TEST_F(BadInput, EveryRouteAnswersBadBytesWith4xxAndValidJson) {
  StartFleet(16);
  // A host token for the agent routes.
  const auto reg = fleet_->Call(
      "POST", "/v1/agent/register", "test-bootstrap-token",
      R"({"hostname":"fuzz-host","region":"us-east","zone":"a","gpus":[{"index":0,"uuid":"GPU-fuzz-0","model":"H100-80GB","memory_bytes":1}]})");
  ASSERT_EQ(reg.status, 201) << reg.body;
  const std::string host_token = Str(Json(reg), "host_token");
  const std::string finance = fleet_->NewKey(fleet_->operator_tenant, "finance");
  auto key_for = [&](unsigned roles) -> std::string {
    if (roles & kMember) return member_;
    if (roles & kAdmin) return fleet_->admin;
    if (roles & kOperator) return fleet_->operator_key;
    if (roles & kFinance) return finance;
    if (roles & kHost) return host_token;
    if (roles & kBootstrap) return "test-bootstrap-token";
    return "";
  };

  int calls = 0;
  std::vector<std::string> failures;
  auto check = [&](const std::string& what, const HttpResponse& r) {
    ++calls;
    if (r.status >= 500 || r.status == 0) failures.push_back(what + " -> " + std::to_string(r.status) + " " + r.body);
    if (r.body.empty()) return;
    boost::system::error_code ec;
    boost::json::parse(r.body, ec);
    if (ec && r.Header("content-type").find("json") != std::string::npos)
      failures.push_back(what + " -> body is not valid JSON: " + r.body);
  };
  for (const auto& route : ApiRoutes()) {
    if (route.pattern == "/v1/openapi.yaml") continue;
    const std::string key = key_for(route.roles);
    const bool has_params = route.pattern.find('{') != std::string::npos;
    const std::string body = route.body == Body::kNone ? "" : "{}";
    for (const auto& bad : kBadValues) {
      if (has_params) {
        const std::string path = Fill(route.pattern, bad);
        check(route.method + " " + path, fleet_->Call(route.method, path, key, body));
      }
      const std::string base = Fill(route.pattern, has_params ? "x" : "");
      for (const auto& q : kQueryNames) {
        const std::string target = base + "?" + q + "=" + bad;
        check(route.method + " " + target, fleet_->Call(route.method, target, key, body));
      }
      if (route.method == "POST") {
        // Raw bytes in a header value; and a body whose strings are not UTF-8 or hold a NUL.
        check(route.method + " " + base + " key=" + bad,
              fleet_->Call(route.method, base, key, body, {{"Idempotency-Key", http::PercentDecode(bad, false)}}));
      }
    }
    if (route.body != Body::kNone) {
      for (const std::string& raw : {std::string("{\"name\":\"\xff\xfe\"}"), std::string("{\"name\":\"a\\u0000b\"}"),
                                    std::string("{\"name\":\"\\udc00\"}"), std::string("{\"gpu_quota\":1e999}"),
                                    std::string("{\"gpu_quota\":-9223372036854775809}"), std::string("[]"),
                                    std::string("\"text\""), std::string("{\"a\":"), std::string(5000, '[')}) {
        const std::string base = Fill(route.pattern, "x");
        check(route.method + " " + base + " body", fleet_->Call(route.method, base, key, raw));
      }
    }
  }
  EXPECT_GT(calls, 1000);
  for (const auto& f : failures) ADD_FAILURE() << f;
  // The requests above are in the server's log, quoted: it must still be valid UTF-8 throughout.
  const std::string log = server_->process().Stderr();
  EXPECT_TRUE(IsValidUtf8(log)) << "the log holds bytes that are not UTF-8";
}

TEST_F(BadInput, NulInAQueryIsRefusedNotCutShort) {
  StartFleet(16);
  auto agent = fleet_->StartAgent("r1", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("r1", "H100-80GB", "total_gpus") == 8; }, 20s));
  EXPECT_EQ(Json(fleet_->Call("GET", "/v1/hosts?region=r1", fleet_->operator_key)).at("data").as_array().size(), 1u);
  // Once, "r1\0zz" was cut at the NUL and answered r1's hosts.
  const auto r = fleet_->Call("GET", "/v1/hosts?region=r1%00zz", fleet_->operator_key);
  EXPECT_EQ(r.status, 400) << r.body;
  const auto e = fleet_->Call("GET", "/v1/instances?state=%ff%fe", member_);
  EXPECT_EQ(e.status, 400);
  EXPECT_TRUE(IsValidUtf8(e.body));
  EXPECT_EQ(e.body.find('\xff'), std::string::npos);  // never echoed
}
