#include "accounts/api_keys.hpp"

#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/ids.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

constexpr std::string_view kTokenPrefix = "spw_";
constexpr size_t kIdChars = 26, kSecretChars = 43;

#define SPW_KEY_COLUMNS                                                                            \
  "id, tenant_id, role, name, " SPW_EPOCH_MS("created_at") " AS created_ms, " SPW_EPOCH_MS( \
      "revoked_at") " AS revoked_ms, " SPW_EPOCH_MS("last_used_at") " AS last_used_ms"

const Statement kInsertKey{"insert_api_key",
                           "INSERT INTO api_keys (id, tenant_id, role, name, secret_hash) "
                           "VALUES ($1, $2, $3, NULLIF($4, ''), decode($5, 'hex')) RETURNING " SPW_KEY_COLUMNS};
const Statement kListKeys{"list_api_keys",
                          "SELECT " SPW_KEY_COLUMNS " FROM api_keys WHERE tenant_id = $1 AND id > $2 "
                          "ORDER BY id LIMIT $3"};
const Statement kRevokeKey{"revoke_api_key",
                           "UPDATE api_keys SET revoked_at = now() "
                           "WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL RETURNING " SPW_KEY_COLUMNS};
const Statement kTenantKey{"tenant_api_key", "SELECT " SPW_KEY_COLUMNS " FROM api_keys WHERE id = $1 AND tenant_id = $2"};
// last_used_at is kept to the minute, so a hot key costs one write a minute, not one per request.
const Statement kAuthKey{"auth_key", R"sql(
SELECT k.tenant_id, k.role, encode(k.secret_hash, 'hex') AS secret_hash, k.revoked_at IS NOT NULL AS revoked,
       t.status = 'active' AS tenant_active, t.is_operator,
       k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds' AS touch_due
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
WHERE k.id = $1)sql"};
const Statement kTouchKey{"touch_key", "UPDATE api_keys SET last_used_at = now() WHERE id = $1"};

ApiKey KeyFrom(const pqxx::row& r) {
  return ApiKey{r["id"].as<std::string>(),        r["tenant_id"].as<std::string>(),
                r["role"].as<std::string>(),      TextFrom(r["name"]),
                TimeFrom(r["created_ms"]).value_or(TimeMs{}), TimeFrom(r["revoked_ms"]),
                TimeFrom(r["last_used_ms"])};
}

}  // namespace

GeneratedKey GenerateApiKey() {
  GeneratedKey k;
  k.id = NewId("key");
  const std::string secret = Base64UrlEncode(RandomBytes(32));
  k.token = std::string(kTokenPrefix) + k.id.substr(4) + "_" + secret;
  k.secret_hash = Sha256Hex(secret);
  return k;
}

std::optional<ParsedKey> ParseSecretToken(const std::string& token, std::string_view prefix, std::string_view id_prefix) {
  if (token.size() != prefix.size() + kIdChars + 1 + kSecretChars) return std::nullopt;
  if (token.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  if (token[prefix.size() + kIdChars] != '_') return std::nullopt;
  ParsedKey p{std::string(id_prefix) + "_" + token.substr(prefix.size(), kIdChars), token.substr(token.size() - kSecretChars)};
  if (!IsValidId(p.id, id_prefix)) return std::nullopt;
  return p;
}

std::optional<ParsedKey> ParseApiKey(const std::string& token) { return ParseSecretToken(token, kTokenPrefix, "key"); }

IssuedKey IssueApiKey(Tx& tx, const std::string& tenant_id, const std::string& role, const std::string& name) {
  const auto key = GenerateApiKey();
  const auto rows = tx.exec_prepared(kInsertKey.name, key.id, tenant_id, role, name, key.secret_hash);
  return {KeyFrom(rows[0]), key.token};
}

std::optional<ApiKey> FindApiKey(Tx& tx, const std::string& tenant_id, const std::string& key_id) {
  const auto rows = tx.exec_prepared(kTenantKey.name, key_id, tenant_id);
  if (rows.empty()) return std::nullopt;
  return KeyFrom(rows[0]);
}

std::vector<ApiKey> ListApiKeys(Tx& tx, const std::string& tenant_id, const std::string& after, int limit) {
  std::vector<ApiKey> out;
  for (const auto& r : tx.exec_prepared(kListKeys.name, tenant_id, after, limit)) out.push_back(KeyFrom(r));
  return out;
}

std::optional<ApiKey> RevokeApiKey(Tx& tx, const std::string& tenant_id, const std::string& key_id) {
  const auto rows = tx.exec_prepared(kRevokeKey.name, key_id, tenant_id);
  if (rows.empty()) return std::nullopt;
  return KeyFrom(rows[0]);
}

std::optional<KeyCredential> FindKeyCredential(Tx& tx, const std::string& key_id) {
  const auto rows = tx.exec_prepared(kAuthKey.name, key_id);
  if (rows.empty()) return std::nullopt;
  const auto& r = rows[0];
  return KeyCredential{r["tenant_id"].as<std::string>(), r["role"].as<std::string>(),
                       r["secret_hash"].as<std::string>(), r["revoked"].as<bool>(),
                       r["tenant_active"].as<bool>(),      r["is_operator"].as<bool>(),
                       r["touch_due"].as<bool>()};
}

void TouchApiKey(Tx& tx, const std::string& key_id) { tx.exec_prepared(kTouchKey.name, key_id); }

}  // namespace spillway
