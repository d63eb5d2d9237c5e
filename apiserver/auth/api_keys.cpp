#include "apiserver/auth/api_keys.hpp"

#include "apiserver/auth/key_cache.hpp"

#include "core/crypto.hpp"
#include "accounts/api_keys.hpp"
#include "accounts/console_sessions.hpp"
#include "core/db.hpp"
#include "provisioning/hosts.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"

namespace spillway {
namespace {

ApiError Unauthenticated(const std::string& message) { return ApiError(401, "unauthenticated", message); }

Principal KeyPrincipal(const std::string& key_id, KeyCache::Entry key) {
  Principal p;
  p.key_id = key_id;
  p.tenant_id = std::move(key.tenant_id);
  p.role = std::move(key.role);
  p.role_bit = RoleBit(p.role);
  p.is_operator = key.is_operator;
  return p;
}

Principal HostPrincipal(const std::string& host_id) {
  Principal p;
  p.host_id = host_id;
  p.role = "host";
  p.role_bit = kHost;
  return p;
}

}  // namespace

std::optional<Principal> AuthenticateFromCache(const std::string& authorization, KeyCache& cache) {
  if (authorization.size() < 7 || strncasecmp(authorization.c_str(), "Bearer ", 7) != 0) return std::nullopt;
  const std::string credential = authorization.substr(7);
  if (credential.rfind("spwh_", 0) == 0) {
    const auto host = ParseHostToken(credential);
    if (!host) return std::nullopt;
    const auto hit = cache.Find(host->id);
    if (!hit || hit->role != "host" || !ConstantTimeEquals(Sha256Hex(host->secret), hit->secret_hash)) return std::nullopt;
    return HostPrincipal(host->id);
  }
  const auto parsed = ParseApiKey(credential);
  if (!parsed) return std::nullopt;
  auto hit = cache.Find(parsed->id);
  if (!hit || hit->role == "host" || !ConstantTimeEquals(Sha256Hex(parsed->secret), hit->secret_hash)) return std::nullopt;
  return KeyPrincipal(parsed->id, std::move(*hit));
}

Principal Authenticate(Session& conn, const std::string& authorization, bool accepts_bootstrap,
                       const std::string& bootstrap_token, KeyCache* cache) {
  if (authorization.empty()) throw Unauthenticated("an API key is required: Authorization: Bearer <key>");
  if (authorization.size() < 7 || strncasecmp(authorization.c_str(), "Bearer ", 7) != 0)
    throw Unauthenticated("the Authorization header must be: Bearer <key>");
  const std::string credential = authorization.substr(7);
  if (accepts_bootstrap && !bootstrap_token.empty() && ConstantTimeEquals(credential, bootstrap_token)) {
    Principal p;
    p.role = "bootstrap";
    p.role_bit = kBootstrap;
    return p;
  }
  if (credential.rfind("spwh_", 0) == 0) {  // a host token: spwh_<26 id chars>_<43 secret chars>
    const auto host = ParseHostToken(credential);
    const std::string host_id = host ? host->id : "";
    const std::string presented_hash = host ? Sha256Hex(host->secret) : std::string(64, 'x');
    if (!host) throw Unauthenticated("the host token is malformed");
    if (cache) {
      if (auto hit = cache->Find(host_id); hit && ConstantTimeEquals(presented_hash, hit->secret_hash))
        return HostPrincipal(host_id);
    }
    const std::uint64_t generation = cache ? cache->Generation() : 0;
    Autocommit tx(conn);
    const auto found = HostTokenHash(tx, host_id);
    const std::string stored = found.value_or(std::string(64, '0'));
    if (!ConstantTimeEquals(presented_hash, stored) || !found)
      throw Unauthenticated("the host token is not valid (unknown, or replaced by a newer registration)");
    // Remembered like an API key; a new registration rotates the token and a trigger says so.
    if (cache) cache->Store(generation, host_id, KeyCache::Entry{stored, "", "host", false});
    return HostPrincipal(host_id);
  }
  const auto parsed = ParseApiKey(credential);
  if (!parsed) throw Unauthenticated("the API key is malformed");
  const std::string presented = Sha256Hex(parsed->secret);

  if (cache) {
    if (auto hit = cache->Find(parsed->id); hit && ConstantTimeEquals(presented, hit->secret_hash))
      return KeyPrincipal(parsed->id, std::move(*hit));
  }
  const std::uint64_t generation = cache ? cache->Generation() : 0;
  Autocommit tx(conn);
  const auto found = FindKeyCredential(tx, parsed->id);
  // Compare against something even for an unknown id, so timing says nothing about which ids exist.
  const std::string stored = found ? found->secret_hash : std::string(64, '0');
  const bool match = ConstantTimeEquals(presented, stored);
  if (!found || !match || found->revoked) throw Unauthenticated("the API key is not valid (unknown or revoked)");
  if (!found->tenant_active) throw ApiError(403, "tenant_suspended", "this key's tenant is suspended");
  if (found->touch_due) TouchApiKey(tx, parsed->id);
  KeyCache::Entry key{stored, found->tenant_id, found->role, found->is_operator};
  if (cache) cache->Store(generation, parsed->id, key);
  return KeyPrincipal(parsed->id, std::move(key));
}

Principal AuthenticateSession(Session& conn, const std::string& cookie, bool state_change,
                              const std::string& csrf_token) {
  const auto parsed = ParseSessionCookie(cookie);
  if (!parsed) throw Unauthenticated("the console session cookie is malformed: sign in again");
  const std::string presented = Sha256Hex(parsed->secret);
  Autocommit tx(conn);
  const auto found = FindSessionCredential(tx, parsed->id);
  const std::string stored = found ? found->secret_hash : std::string(64, '0');
  const bool match = ConstantTimeEquals(presented, stored);
  if (!found || !match || !found->live || found->key_revoked)
    throw Unauthenticated("the console session has ended (signed out, expired or its key revoked): sign in again");
  if (!found->tenant_active) throw ApiError(403, "tenant_suspended", "this key's tenant is suspended");
  // Compared in constant time; the token is the session's own, so a page of another site (which
  // cannot read it) cannot make a signed-in browser change anything.
  if (state_change && (csrf_token.empty() || !ConstantTimeEquals(csrf_token, found->csrf_token)))
    throw ApiError(403, "csrf_failed", "a change made with a console session must carry its X-CSRF-Token header");
  Principal p = KeyPrincipal(found->key_id, KeyCache::Entry{"", found->tenant_id, found->role, found->is_operator});
  p.session_id = parsed->id;
  p.session_csrf = found->csrf_token;
  p.session_expires_at = found->expires_at;
  return p;
}

}  // namespace spillway
