#include "accounts/console_sessions.hpp"

#include "accounts/api_keys.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/ids.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

constexpr std::string_view kCookiePrefix = "sps_";

const Statement kOpenSession{"open_console_session", R"sql(
INSERT INTO console_sessions (id, key_id, secret_hash, csrf_token, created_at, expires_at)
VALUES ($1, $2, decode($3, 'hex'), $4, now(), now() + $5 * interval '1 millisecond')
RETURNING )sql" SPW_EPOCH_MS("expires_at") " AS expires_ms"};
const Statement kAuthSession{"auth_console_session", R"sql(
SELECT s.key_id, encode(s.secret_hash, 'hex') AS secret_hash, s.csrf_token,
       s.ended_at IS NULL AND s.expires_at > now() AS live, )sql" SPW_EPOCH_MS("s.expires_at") R"sql( AS expires_ms,
       k.tenant_id, k.role, k.revoked_at IS NOT NULL AS key_revoked, t.status = 'active' AS tenant_active, t.is_operator
FROM console_sessions s JOIN api_keys k ON k.id = s.key_id JOIN tenants t ON t.id = k.tenant_id
WHERE s.id = $1)sql"};
const Statement kEndSession{"end_console_session",
                            "UPDATE console_sessions SET ended_at = now() WHERE id = $1 AND ended_at IS NULL"};

}  // namespace

OpenedSession OpenConsoleSession(Tx& tx, const std::string& key_id, Millis ttl) {
  OpenedSession s;
  s.id = NewId("ses");
  const std::string secret = Base64UrlEncode(RandomBytes(32));
  s.cookie = std::string(kCookiePrefix) + s.id.substr(4) + "_" + secret;
  s.csrf_token = Base64UrlEncode(RandomBytes(32));
  const auto rows = tx.exec_prepared(kOpenSession.name, s.id, key_id, Sha256Hex(secret), s.csrf_token,
                                     static_cast<long long>(ttl.count()));
  s.expires_at = TimeFrom(rows[0]["expires_ms"]).value_or(TimeMs{});
  return s;
}

std::optional<ParsedSessionCookie> ParseSessionCookie(const std::string& value) {
  auto parsed = ParseSecretToken(value, kCookiePrefix, "ses");
  if (!parsed) return std::nullopt;
  return ParsedSessionCookie{std::move(parsed->id), std::move(parsed->secret)};
}

std::string SessionCookieOf(const std::string& cookie_header) {
  // RFC 6265 §4.2.1: "name=value" pairs separated by "; " (headers sent twice were joined by ", ").
  const std::string name = std::string(kSessionCookie) + "=";
  size_t start = 0;
  while (start < cookie_header.size()) {
    size_t end = cookie_header.find_first_of(";,", start);
    if (end == std::string::npos) end = cookie_header.size();
    size_t b = start;
    while (b < end && cookie_header[b] == ' ') ++b;
    if (cookie_header.compare(b, name.size(), name) == 0) {
      std::string value = cookie_header.substr(b + name.size(), end - b - name.size());
      while (!value.empty() && value.back() == ' ') value.pop_back();
      return value;
    }
    start = end + 1;
  }
  return "";
}

std::optional<SessionCredential> FindSessionCredential(Tx& tx, const std::string& session_id) {
  const auto rows = tx.exec_prepared(kAuthSession.name, session_id);
  if (rows.empty()) return std::nullopt;
  const auto& r = rows[0];
  SessionCredential c;
  c.key_id = r["key_id"].as<std::string>();
  c.secret_hash = r["secret_hash"].as<std::string>();
  c.csrf_token = r["csrf_token"].as<std::string>();
  c.live = r["live"].as<bool>();
  c.expires_at = TimeFrom(r["expires_ms"]).value_or(TimeMs{});
  c.tenant_id = r["tenant_id"].as<std::string>();
  c.role = r["role"].as<std::string>();
  c.key_revoked = r["key_revoked"].as<bool>();
  c.tenant_active = r["tenant_active"].as<bool>();
  c.is_operator = r["is_operator"].as<bool>();
  return c;
}

bool EndConsoleSession(Tx& tx, const std::string& session_id) {
  return tx.exec_prepared(kEndSession.name, session_id).affected_rows() > 0;
}

}  // namespace spillway
