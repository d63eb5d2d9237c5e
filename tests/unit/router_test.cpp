#include "apiserver/router.hpp"

#include <gtest/gtest.h>

#include <set>

#include "apiserver/app.hpp"
#include "apiserver/http/message.hpp"

using namespace spillway;

namespace {
Reply Nop(Ctx&) { return {}; }
}  // namespace

TEST(Router, MatchesPatternsAndExtractsParams) {
  Router r({{"GET", "/v1/tenants", kAdmin, Nop},
            {"POST", "/v1/tenants", kAdmin, Nop},
            {"GET", "/v1/tenants/{id}", kAdmin, Nop},
            {"DELETE", "/v1/tenants/{id}/api-keys/{key_id}", kAdmin, Nop}});
  auto m = r.Find("GET", "/v1/tenants/ten_1");
  ASSERT_TRUE(m.route);
  EXPECT_EQ(m.route->pattern, "/v1/tenants/{id}");
  EXPECT_EQ(m.params.at("id"), "ten_1");
  m = r.Find("DELETE", "/v1/tenants/a/api-keys/b");
  ASSERT_TRUE(m.route);
  EXPECT_EQ(m.params.at("key_id"), "b");
}

TEST(Router, WrongMethodListsAllowedAndUnknownPathHasNone) {
  Router r({{"GET", "/v1/tenants", kAdmin, Nop}, {"POST", "/v1/tenants", kAdmin, Nop}});
  auto m = r.Find("PUT", "/v1/tenants");
  EXPECT_FALSE(m.route);
  EXPECT_EQ(m.allowed, (std::vector<std::string>{"GET", "HEAD", "POST"}));
  m = r.Find("GET", "/v1/nothing");
  EXPECT_FALSE(m.route);
  EXPECT_TRUE(m.allowed.empty());
  EXPECT_FALSE(r.Find("GET", "/v1/tenants/").route);
  EXPECT_FALSE(r.Find("GET", "v1/tenants").route);
}

TEST(Router, HeadIsAnsweredByTheGetRoute) {
  // RFC 9110 §9.3.2: HEAD is GET without the body; the transport drops the body.
  Router r({{"POST", "/v1/tenants", kAdmin, Nop}, {"GET", "/v1/tenants", kAdmin, Nop}});
  auto m = r.Find("HEAD", "/v1/tenants");
  ASSERT_TRUE(m.route);
  EXPECT_EQ(m.route->method, "GET");
  EXPECT_FALSE(Router({{"POST", "/v1/tenants", kAdmin, Nop}}).Find("HEAD", "/v1/tenants").route);
}

TEST(Router, RouteTableIsWellFormed) {
  // Every route is unique, and every route but the public document and the console's sign-in (its
  // body carries the key) needs a role.
  std::set<std::string> seen;
  for (const auto& route : ApiRoutes()) {
    EXPECT_TRUE(seen.insert(route.method + " " + route.pattern).second) << route.pattern;
    if (route.pattern != "/v1/openapi.yaml" && route.pattern != "/v1/console/sessions") {
      EXPECT_NE(route.roles, kUnauthenticated) << route.pattern;
    }
    if (!route.tenant_param.empty()) {
      EXPECT_NE(route.pattern.find("{" + route.tenant_param + "}"), std::string::npos) << route.pattern;
    }
  }
}

TEST(Router, EveryRouteIsInTheOpenApiDocument) {
  const std::string& doc = OpenApiDocument();
  for (const auto& route : ApiRoutes()) {
    const auto at = doc.find("\n  " + route.pattern + ":\n");
    ASSERT_NE(at, std::string::npos) << route.pattern << " is missing from openapi.yaml";
    std::string method = route.method;
    for (auto& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const auto next_path = doc.find("\n  /", at + 1);
    const auto op = doc.find("\n    " + method + ":", at);
    EXPECT_TRUE(op != std::string::npos && op < next_path) << route.method << " " << route.pattern;
  }
}

TEST(Message, ErrorBodyAndRequestIds) {
  const auto r = http::ErrorResponse(404, "not_found", "no \"such\" thing", "req_1");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, R"({"error":{"code":"not_found","message":"no \"such\" thing","request_id":"req_1"}})" "\n");
  EXPECT_EQ(http::RequestIdFrom("abc-123"), "abc-123");
  EXPECT_EQ(http::RequestIdFrom("bad id\r\n").rfind("req_", 0), 0u);
  EXPECT_EQ(http::RequestIdFrom(std::string(200, 'a')).rfind("req_", 0), 0u);
  EXPECT_EQ(http::PercentDecode("a%20b+c%2", true), "a b c%2");
}
