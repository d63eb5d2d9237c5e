// The web console's server side, over real sockets: the files it serves and their security headers,
// and the session an API key is exchanged for (cookie flags, CSRF, sign-out, revocation, expiry).
// The console itself, in a browser, is Finance.TheConsoleInARealBrowser (finance_test.cpp).
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <filesystem>
#include <regex>

#include "core/db.hpp"
#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::test;

namespace {

class Console : public FleetTest {
 protected:
  void SetUp() override { StartFleet(4); }
  HttpResponse SignIn(const std::string& key) {
    return fleet_->Call("POST", "/v1/console/sessions", "", "{\"api_key\":\"" + key + "\"}");
  }
  // The cookie's "name=value", as a browser would send it back.
  static std::string CookieOf(const HttpResponse& r) {
    const std::string set = r.Header("set-cookie");
    return set.substr(0, set.find(';'));
  }
  HttpResponse WithCookie(const std::string& method, const std::string& path, const std::string& cookie,
                          const std::string& body = "", const std::string& csrf = "") {
    std::map<std::string, std::string> headers{{"Cookie", "theme=dark; " + cookie}};
    if (!csrf.empty()) headers["X-CSRF-Token"] = csrf;
    return fleet_->Call(method, path, "", body, headers);
  }
  int SshKeys() { return static_cast<int>(Json(fleet_->Call("GET", "/v1/ssh-keys", member_)).at("data").as_array().size()); }
};

const char* kPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPT6wxx/eQpKW3OJ4CgCjvHXG62kscaAD48rdr4++k3F t";

}  // namespace

TEST_F(Console, ItsFilesAreServedWithASecurityPolicyAndNoInlineScript) {
  const auto page = fleet_->Call("GET", "/console", "");
  ASSERT_EQ(page.status, 200) << page.body;
  EXPECT_EQ(page.Header("content-type"), "text/html; charset=utf-8");
  const std::string csp = page.Header("content-security-policy");
  EXPECT_NE(csp.find("script-src 'self';"), std::string::npos) << csp;
  EXPECT_EQ(csp.find("unsafe-inline"), std::string::npos) << csp;
  EXPECT_EQ(csp.find("unsafe-eval"), std::string::npos) << csp;
  EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos) << csp;
  EXPECT_EQ(page.Header("x-frame-options"), "DENY");
  EXPECT_EQ(page.Header("x-content-type-options"), "nosniff");
  // Every file of console/ is served from the binary, with its type; and none of the markup holds an
  // inline script or event handler (the CSP would refuse them anyway).
  int files = 0;
  for (const auto& f : std::filesystem::directory_iterator(std::string(SPILLWAY_SOURCE_DIR) + "/console")) {
    const std::string name = f.path().filename();
    const auto r = fleet_->Call("GET", "/console/" + name, "");
    EXPECT_EQ(r.status, 200) << name;
    EXPECT_EQ(r.body, ReadWhole(f.path())) << name;
    EXPECT_NE(r.Header("content-security-policy"), "") << name;
    if (name.ends_with(".js")) {
      EXPECT_EQ(r.Header("content-type"), "text/javascript; charset=utf-8") << name;
      EXPECT_EQ(r.body.find("innerHTML"), std::string::npos) << name << " builds markup from strings";
    }
    if (name.ends_with(".html")) {
      EXPECT_FALSE(std::regex_search(r.body, std::regex("<script(?![^>]*\\ssrc=)[^>]*>"))) << name;
      EXPECT_FALSE(std::regex_search(r.body, std::regex("\\son[a-z]+\\s*="))) << name;
    }
    ++files;
  }
  EXPECT_GE(files, 5);
  EXPECT_EQ(fleet_->Call("GET", "/console/nothing.js", "").status, 404);
  const auto post = fleet_->Call("POST", "/console", "", "{}");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.Header("allow"), "GET, HEAD");
}

TEST_F(Console, AKeyIsExchangedForAnHttpOnlyStrictCookieThatActsAsTheKey) {
  const auto r = SignIn(member_);
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string set = r.Header("set-cookie");
  EXPECT_EQ(set.rfind("spillway_session=sps_", 0), 0u) << set;
  for (const char* flag : {"; Path=/", "; HttpOnly", "; SameSite=Strict", "; Max-Age=43200"})
    EXPECT_NE(set.find(flag), std::string::npos) << flag << " missing: " << set;
  EXPECT_EQ(set.find("Secure"), std::string::npos) << "plain HTTP: " << set;  // TLS: Lifecycle's TLS test
  EXPECT_EQ(set.find(member_), std::string::npos) << "the key itself must not be the cookie";
  const auto session = Json(r);
  EXPECT_EQ(Str(session, "role"), "member");
  EXPECT_EQ(Str(session, "tenant_id"), tenant_);
  const std::string csrf = Str(session, "csrf_token");
  EXPECT_EQ(csrf.size(), 43u);
  const std::string cookie = CookieOf(r);

  // The cookie reads what the key reads, and only that.
  auto g = WithCookie("GET", "/v1/instances", cookie);
  EXPECT_EQ(g.status, 200) << g.body;
  EXPECT_EQ(WithCookie("GET", "/v1/tenants", cookie).status, 403);  // admin only
  g = WithCookie("GET", "/v1/console/session", cookie);
  ASSERT_EQ(g.status, 200) << g.body;
  EXPECT_EQ(Str(Json(g), "csrf_token"), csrf);  // another tab learns the token here
  EXPECT_EQ(fleet_->Call("GET", "/v1/console/session", member_).status, 404);  // a key has no session

  // A change needs the session's CSRF token; without it, or with another, nothing changes.
  const std::string body = std::string("{\"name\":\"laptop\",\"public_key\":\"") + kPublicKey + "\"}";
  auto w = WithCookie("POST", "/v1/ssh-keys", cookie, body);
  EXPECT_EQ(w.status, 403);
  EXPECT_EQ(Str(Json(w).at("error"), "code"), "csrf_failed");
  EXPECT_EQ(WithCookie("POST", "/v1/ssh-keys", cookie, body, "forged").status, 403);
  EXPECT_EQ(WithCookie("POST", "/v1/ssh-keys", cookie, body, csrf.substr(0, 42) + "x").status, 403);
  EXPECT_EQ(SshKeys(), 0);
  w = WithCookie("POST", "/v1/ssh-keys", cookie, body, csrf);
  EXPECT_EQ(w.status, 201) << w.body;
  EXPECT_EQ(SshKeys(), 1);
  // Another session's token is not this one's.
  const std::string other_csrf = Str(Json(SignIn(member_)), "csrf_token");
  EXPECT_EQ(WithCookie("DELETE", "/v1/ssh-keys/" + Str(Json(w), "id"), cookie, "", other_csrf).status, 403);

  // Bad sign-ins change nothing and say why.
  EXPECT_EQ(SignIn("spw_nothing").status, 401);
  EXPECT_EQ(SignIn("test-bootstrap-token").status, 401);  // only an API key signs in
  EXPECT_EQ(fleet_->Call("POST", "/v1/console/sessions", "", "{}").status, 422);
  EXPECT_EQ(fleet_->Call("POST", "/v1/console/sessions", "", "{\"api_key\":\"" + member_ + "\",\"x\":1}").status, 422);
  EXPECT_EQ(fleet_->Call("POST", "/v1/console/sessions", "", "").status, 400);
  EXPECT_EQ(WithCookie("GET", "/v1/instances", "spillway_session=sps_garbled").status, 401);
  const auto sessions = SqlValue(*db_->Connect(), "SELECT count(*) FROM console_sessions");
  EXPECT_EQ(sessions, "2");

  // Signing in and out is in the audit log.
  const auto audit = fleet_->Call("GET", "/v1/audit?tenant_id=" + tenant_, fleet_->admin);
  EXPECT_NE(audit.body.find("console.sign_in"), std::string::npos) << audit.body;
}

TEST_F(Console, SigningOutRevokingTheKeyOrExpiryEndsTheSessionEverywhere) {
  const auto a = SignIn(member_);
  const std::string cookie = CookieOf(a), csrf = Str(Json(a), "csrf_token");
  ASSERT_EQ(WithCookie("GET", "/v1/volumes", cookie).status, 200);
  EXPECT_EQ(WithCookie("DELETE", "/v1/console/session", cookie).status, 403);  // sign-out needs the token too
  const auto out = WithCookie("DELETE", "/v1/console/session", cookie, "", csrf);
  ASSERT_EQ(out.status, 200) << out.body;
  EXPECT_NE(out.Header("set-cookie").find("spillway_session=; Path=/; Max-Age=0"), std::string::npos)
      << out.Header("set-cookie");
  // Every tab shares the cookie; the server ended it, so each is refused on its next request.
  auto after = WithCookie("GET", "/v1/volumes", cookie);
  EXPECT_EQ(after.status, 401);
  EXPECT_EQ(Str(Json(after).at("error"), "code"), "unauthenticated");
  EXPECT_EQ(WithCookie("DELETE", "/v1/console/session", cookie, "", csrf).status, 401);

  // Revoking the key ends what its sessions may do at once.
  const auto key = Json(fleet_->Call("POST", "/v1/tenants/" + tenant_ + "/api-keys", fleet_->admin, R"({"role":"member"})"));
  const auto b = SignIn(Str(key, "secret"));
  ASSERT_EQ(b.status, 201);
  ASSERT_EQ(WithCookie("GET", "/v1/volumes", CookieOf(b)).status, 200);
  ASSERT_EQ(fleet_->Call("DELETE", "/v1/tenants/" + tenant_ + "/api-keys/" + Str(key, "id"), fleet_->admin).status, 200);
  EXPECT_EQ(WithCookie("GET", "/v1/volumes", CookieOf(b)).status, 401);

  // A session past its end is refused.
  const auto c = SignIn(member_);
  ASSERT_EQ(WithCookie("GET", "/v1/volumes", CookieOf(c)).status, 200);
  ExecSql(*db_->Connect(), "UPDATE console_sessions SET expires_at = created_at - interval '59 minutes', "
                          "created_at = created_at - interval '1 hour' WHERE ended_at IS NULL");
  EXPECT_EQ(WithCookie("GET", "/v1/volumes", CookieOf(c)).status, 401);
}
