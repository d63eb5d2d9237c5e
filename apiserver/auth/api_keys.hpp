#pragma once
#include <optional>
#include <string>

#include "apiserver/context.hpp"
#include "core/db_fwd.hpp"

namespace spillway {

class KeyCache;

// Resolves "Authorization: Bearer <credential>" to its principal: an API key ("spw_…"), a host
// token ("spwh_…", role kHost) or, where the route takes it, the agent bootstrap token (role
// kBootstrap). 401 for a missing, malformed, unknown or revoked credential; 403 tenant_suspended for
// a key of a suspended tenant. With a cache, a key verified there lately costs no database round
// trip (see KeyCache for why revocation still takes effect at once).
// The same, from the cache alone, without the database: nullopt when the cache cannot say (a miss,
// not listening, a wrong secret, or a bootstrap token); then ask Authenticate.
std::optional<Principal> AuthenticateFromCache(const std::string& authorization, KeyCache& cache);

Principal Authenticate(Session& conn, const std::string& authorization, bool accepts_bootstrap = false,
                       const std::string& bootstrap_token = "", KeyCache* cache = nullptr);

// A console session's cookie (accounts/console_sessions.hpp) instead of a key, for a request sent
// without an Authorization header: the principal of the key the session was opened with. 401 for a
// missing, malformed, unknown, signed-out or expired session, or one whose key was revoked; 403
// tenant_suspended as for the key. A state change (`state_change`: any method but GET and HEAD) must
// also carry the session's CSRF token (`csrf_token`, from X-CSRF-Token): 403 csrf_failed without it.
Principal AuthenticateSession(Session& conn, const std::string& cookie, bool state_change,
                              const std::string& csrf_token);

}  // namespace spillway
