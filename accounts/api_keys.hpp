#pragma once
// API keys: the credential format and the store. The server keeps a key's id and the SHA-256 of its
// secret, never the secret.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway {

// An API key as shown once to its owner: "spw_<26 id chars>_<43 chars of a 256-bit secret>".
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
// "<prefix><26 id chars>_<43 secret chars>" (an API key, a console session's cookie) as the id
// "<id_prefix>_<26 chars>" and the secret; nullopt when it is not one.
std::optional<ParsedKey> ParseSecretToken(const std::string& token, std::string_view prefix, std::string_view id_prefix);

struct ApiKey {
  std::string id, tenant_id, role;
  std::optional<std::string> name;
  TimeMs created_at;
  std::optional<TimeMs> revoked_at, last_used_at;
};

struct IssuedKey {
  ApiKey key;
  std::string token;  // shown once
};
// Creates a key of `role` for `tenant_id` (bootstrap-admin and the handler share it).
IssuedKey IssueApiKey(Tx& tx, const std::string& tenant_id, const std::string& role, const std::string& name);
std::optional<ApiKey> FindApiKey(Tx& tx, const std::string& tenant_id, const std::string& key_id);
std::vector<ApiKey> ListApiKeys(Tx& tx, const std::string& tenant_id, const std::string& after, int limit);
// Revokes a live key; nullopt when there is no live key of that id in the tenant.
std::optional<ApiKey> RevokeApiKey(Tx& tx, const std::string& tenant_id, const std::string& key_id);

// What authentication needs of a key, in one round trip.
struct KeyCredential {
  std::string tenant_id, role, secret_hash;  // hex
  bool revoked = false, tenant_active = true, is_operator = false;
  bool touch_due = false;  // last_used_at is more than a minute old: record this use
};
std::optional<KeyCredential> FindKeyCredential(Tx& tx, const std::string& key_id);
void TouchApiKey(Tx& tx, const std::string& key_id);

}  // namespace spillway
