// Webhook targets and signatures (webhooks/): which URLs are refused and why, and the signature a
// receiver checks (HMAC-SHA256 over "<timestamp>.<body>", RFC 4231's vector for the primitive).
#include <gtest/gtest.h>

#include "core/crypto.hpp"
#include "webhooks/webhooks.hpp"

using namespace spillway;
using namespace spillway::webhooks;

TEST(WebhookTargets, HttpsAnywhereHttpOnlyToAllowedHostsNothingOdd) {
  Settings s;
  s.http_hosts = {"127.0.0.1", "localhost"};
  std::string why;
  auto t = ParseTarget("https://hooks.example.com/spillway?x=1", s, &why);
  ASSERT_TRUE(t) << why;
  EXPECT_EQ(t->scheme, "https");
  EXPECT_EQ(t->host, "hooks.example.com");
  EXPECT_EQ(t->port, "443");
  EXPECT_EQ(t->target, "/spillway?x=1");
  t = ParseTarget("http://127.0.0.1:8081", s, &why);
  ASSERT_TRUE(t) << why;
  EXPECT_EQ(t->port, "8081");
  EXPECT_EQ(t->target, "/");
  t = ParseTarget("https://[::1]:9443/h", s, &why);
  ASSERT_TRUE(t) << why;
  EXPECT_EQ(t->host, "::1");
  for (const char* bad : {"http://hooks.example.com/x", "ftp://127.0.0.1/", "https://user:pw@hooks.example/",
                          "https://hooks.example/x#frag", "https:///x", "https://hooks.example:0/", "https://hooks.example:99999/",
                          "https://hooks.example/a b", "hooks.example/x", "http://127.0.0.2/", ""}) {
    why.clear();
    EXPECT_FALSE(ParseTarget(bad, s, &why)) << bad;
    EXPECT_EQ(why.rfind("url: ", 0), 0u) << bad << ": " << why;
  }
}

TEST(WebhookSignatures, HmacSha256OverTimestampAndBody) {
  // RFC 4231, test case 2.
  EXPECT_EQ(HmacSha256Hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  const std::string body = R"({"id":"evt_1","type":"invoice.finalized"})";
  EXPECT_EQ(Signature("whsec_test", 1767225600, body),
            "t=1767225600,v1=" + HmacSha256Hex("whsec_test", "1767225600." + body));
  EXPECT_NE(Signature("whsec_test", 1767225601, body), Signature("whsec_test", 1767225600, body));
  const std::string secret = NewSecret();
  EXPECT_EQ(secret.rfind("whsec_", 0), 0u);
  EXPECT_EQ(secret.size(), 6u + 43u);
  EXPECT_NE(NewSecret(), secret);
}
