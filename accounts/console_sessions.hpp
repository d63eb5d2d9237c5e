#pragma once
// Web console sessions: an API key exchanged once for a cookie, so the browser never stores the
// key. The cookie's value is "sps_<26 id chars>_<43 chars of a 256-bit secret>"; the server keeps
// the secret's SHA-256. Each session has a CSRF token that every state change must send back.
#include <optional>
#include <string>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"
#include "core/duration.hpp"

namespace spillway {

inline constexpr const char* kSessionCookie = "spillway_session";

struct OpenedSession {
  std::string id;          // "ses_…"
  std::string cookie;      // the cookie's value, shown once
  std::string csrf_token;  // 43 chars
  TimeMs expires_at;
};
// A session of key `key_id` (already authenticated by the caller) that lasts `ttl`.
OpenedSession OpenConsoleSession(Tx& tx, const std::string& key_id, Millis ttl);

struct ParsedSessionCookie {
  std::string id, secret;
};
std::optional<ParsedSessionCookie> ParseSessionCookie(const std::string& value);
// The spillway_session cookie of a Cookie header ("a=1; spillway_session=…"), or "".
std::string SessionCookieOf(const std::string& cookie_header);

// What authenticating a session needs, with its key's own credential, in one round trip.
struct SessionCredential {
  std::string key_id, secret_hash /* hex */, csrf_token;
  bool live = false;  // neither signed out nor expired
  TimeMs expires_at;
  // The key's: as FindKeyCredential has them.
  std::string tenant_id, role;
  bool key_revoked = false, tenant_active = true, is_operator = false;
};
std::optional<SessionCredential> FindSessionCredential(Tx& tx, const std::string& session_id);
// Signs a session out; false when it was already ended (or never was).
bool EndConsoleSession(Tx& tx, const std::string& session_id);

}  // namespace spillway
