#include "apiserver/handlers/console.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "accounts/console_sessions.hpp"
#include "apiserver/auth/api_keys.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"

namespace spillway::handlers {
namespace {

// HttpOnly: no script reads it. SameSite=Strict: no other site's page sends it. Secure: only over
// TLS, where the request came over TLS (a plain listener is for a private network or a proxy).
std::string SessionCookieHeader(const std::string& value, std::int64_t max_age_s, bool tls) {
  return std::string(kSessionCookie) + "=" + value + "; Path=/; Max-Age=" + std::to_string(max_age_s) +
         "; HttpOnly; SameSite=Strict" + (tls ? "; Secure" : "");
}

boost::json::object SessionJson(const Principal& p, const std::string& csrf_token, TimeMs expires_at) {
  return {{"key_id", p.key_id},     {"tenant_id", p.tenant_id},
          {"role", p.role},         {"csrf_token", csrf_token},
          {"expires_at", FormatTime(expires_at)}};
}

void RequireSession(const Ctx& ctx) {
  if (ctx.principal.session_id.empty())
    throw ApiError(404, "not_found", "this request was not made with a console session (its cookie)");
}

}  // namespace

Reply SignIn(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"api_key"});
  const std::string key = ReqString(body, "api_key", 200);
  if (key.rfind("spw_", 0) != 0) throw ApiError(401, "unauthenticated", "sign in with an API key (spw_…)");
  Principal principal = Authenticate(ctx.conn, "Bearer " + key);
  const Millis ttl = ctx.config.Duration("console.session_ttl");
  ctx.principal = principal;
  return ctx.Write([&](Tx& tx) {
    const auto opened = OpenConsoleSession(tx, principal.key_id, ttl);
    RecordAudit(tx, ctx.AuditOf(principal.tenant_id, "console.sign_in", opened.id));
    Reply reply{201, SessionJson(principal, opened.csrf_token, opened.expires_at)};
    reply.headers.emplace_back("Set-Cookie", SessionCookieHeader(opened.cookie, ttl.count() / 1000, ctx.request.tls));
    reply.headers.emplace_back("Cache-Control", "no-store");
    return reply;
  });
}

Reply GetConsoleSession(Ctx& ctx) {
  RequireSession(ctx);  // authenticating the cookie read the session: its token and end are at hand
  Reply reply{200, SessionJson(ctx.principal, ctx.principal.session_csrf, ctx.principal.session_expires_at)};
  reply.headers.emplace_back("Cache-Control", "no-store");
  return reply;
}

Reply SignOut(Ctx& ctx) {
  RequireSession(ctx);
  ctx.Write([&](Tx& tx) {
    EndConsoleSession(tx, ctx.principal.session_id);
    RecordAudit(tx, ctx.AuditOf(ctx.principal.tenant_id, "console.sign_out", ctx.principal.session_id));
  });
  // Every tab shares the one session: each learns it ended on its next request (401).
  Reply reply{200, boost::json::object{{"signed_out", true}}};
  reply.headers.emplace_back("Set-Cookie", SessionCookieHeader("", 0, ctx.request.tls));
  return reply;
}

}  // namespace spillway::handlers
