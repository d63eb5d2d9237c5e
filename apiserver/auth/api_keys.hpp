#pragma once
#include <optional>
#include <pqxx/pqxx>
#include <string>

#include "apiserver/context.hpp"

namespace spillway {

class KeyCache;

// An API key as shown once to its owner: "spw_<26 id chars>_<43 chars of a 256-bit secret>".
// The server keeps only the key id and SHA-256 of the secret.
struct GeneratedKey {
  std::string id;           // "key_…"
  std::string token;        // the whole secret string
  std::string secret_hash;  // hex SHA-256 of the secret
};
GeneratedKey GenerateApiKey();

struct ParsedKey {
  std::string id;
  std::string secret;
};
std::optional<ParsedKey> ParseApiKey(const std::string& token);

// Resolves "Authorization: Bearer <credential>" to its principal: an API key ("spw_…"), a host
// token ("spwh_…", role kHost) or, where the route takes it, the agent bootstrap token (role
// kBootstrap). 401 for a missing, malformed, unknown or revoked credential; 403 tenant_suspended for
// a key of a suspended tenant. With a cache, a key verified there lately costs no database round
// trip (see KeyCache for why revocation still takes effect at once).
// The same, from the cache alone, without the database: nullopt when the cache cannot say (a miss,
// not listening, a wrong secret, or a bootstrap token); then ask Authenticate.
std::optional<Principal> AuthenticateFromCache(const std::string& authorization, KeyCache& cache);

Principal Authenticate(pqxx::connection& conn, const std::string& authorization, bool accepts_bootstrap = false,
                       const std::string& bootstrap_token = "", KeyCache* cache = nullptr);

}  // namespace spillway
