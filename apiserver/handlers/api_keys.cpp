#include "apiserver/handlers/api_keys.hpp"

#include <boost/json.hpp>

#include "apiserver/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "apiserver/auth/api_keys.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"

namespace spillway::handlers {
namespace {

#define SPW_KEY_COLUMNS \
  "id, tenant_id, role, name, (extract(epoch FROM created_at) * 1000)::bigint, " \
  "(extract(epoch FROM revoked_at) * 1000)::bigint, (extract(epoch FROM last_used_at) * 1000)::bigint"

const Statement kInsertKey{"insert_api_key",
                           "INSERT INTO api_keys (id, tenant_id, role, name, secret_hash) "
                           "VALUES ($1, $2, $3, NULLIF($4, ''), decode($5, 'hex')) RETURNING " SPW_KEY_COLUMNS};
const Statement kTenantKind{"tenant_kind", "SELECT is_operator FROM tenants WHERE id = $1"};
const Statement kGetKey{"get_api_key", "SELECT " SPW_KEY_COLUMNS " FROM api_keys WHERE id = $1"};
const Statement kListKeys{"list_api_keys",
                          "SELECT " SPW_KEY_COLUMNS " FROM api_keys WHERE tenant_id = $1 AND id > $2 "
                          "ORDER BY id LIMIT $3"};
const Statement kRevokeKey{"revoke_api_key",
                           "UPDATE api_keys SET revoked_at = now() "
                           "WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL RETURNING " SPW_KEY_COLUMNS};
const Statement kTenantKey{"tenant_api_key", "SELECT " SPW_KEY_COLUMNS " FROM api_keys WHERE id = $1 AND tenant_id = $2"};

boost::json::object KeyJson(const pqxx::row& r) {
  boost::json::object o{{"id", r[0].as<std::string>()},
                        {"tenant_id", r[1].as<std::string>()},
                        {"role", r[2].as<std::string>()},
                        {"name", JsonText(r[3])},
                        {"created_at", JsonTime(r[4])},
                        {"revoked_at", JsonTime(r[5])},
                        {"last_used_at", JsonTime(r[6])}};
  return o;
}

// A missing tenant is 404; a customer tenant may hold member keys only.
bool TenantIsOperator(pqxx::transaction_base& tx, const std::string& tenant_id) {
  const auto rows = IsValidId(tenant_id, "ten") ? tx.exec_prepared(kTenantKind.name, tenant_id) : pqxx::result();
  if (rows.empty()) throw ApiError(404, "not_found", "no such tenant");
  return rows[0][0].as<bool>();
}

}  // namespace

IssuedKey IssueApiKey(pqxx::transaction_base& tx, const std::string& tenant_id, const std::string& role,
                      const std::string& name) {
  const auto key = GenerateApiKey();
  tx.exec_prepared(kInsertKey.name, key.id, tenant_id, role, name, key.secret_hash);
  return {key.id, key.token};
}

Reply CreateApiKey(Ctx& ctx) {
  const std::string& tenant_id = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"role", "name"});
  const std::string role = ReqString(body, "role", 20);
  if (!RoleBit(role))
    throw ApiError(422, "validation_failed", "role: must be one of admin, finance, operator, member");
  const std::string name = OptName(body, "name", 200).value_or("");

  return ctx.Write([&](pqxx::transaction_base& tx) {
    if (!TenantIsOperator(tx, tenant_id) && role != "member")
      throw ApiError(422, "role_not_allowed", "a customer tenant's keys can only have the member role");
    const auto issued = IssueApiKey(tx, tenant_id, role, name);
    Audit(tx, ctx, tenant_id, "api_key.create", issued.id);
    auto json = KeyJson(tx.exec_prepared(kGetKey.name, issued.id)[0]);
    json["secret"] = issued.token;  // shown this once; only its hash is kept
    return Reply{201, std::move(json)};
  });
}

Reply ListApiKeys(Ctx& ctx) {
  const std::string& tenant_id = ctx.Param("id");
  const int limit = ctx.Limit();
  const std::string cursor = ctx.Query("cursor");
  if (!cursor.empty() && !IsValidId(cursor, "key"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  pqxx::nontransaction tx(ctx.conn);
  TenantIsOperator(tx, tenant_id);
  const auto rows = tx.exec_prepared(kListKeys.name, tenant_id, cursor, limit + 1);
  return {200, Page(rows, limit, KeyJson)};
}

Reply RevokeApiKey(Ctx& ctx) {
  const std::string& tenant_id = ctx.Param("id");
  const std::string& key_id = ctx.Param("key_id");
  if (!IsValidId(key_id, "key")) throw ApiError(404, "not_found", "no such API key");
  auto reply = ctx.Write([&](pqxx::transaction_base& tx) {
    const auto rows = tx.exec_prepared(kRevokeKey.name, key_id, tenant_id);
    if (rows.empty()) {
      // Revoked already: answering again changes nothing and is not audited twice.
      const auto existing = tx.exec_prepared(kTenantKey.name, key_id, tenant_id);
      if (existing.empty()) throw ApiError(404, "not_found", "no such API key");
      return Reply{200, KeyJson(existing[0])};
    }
    Audit(tx, ctx, tenant_id, "api_key.revoke", key_id);
    return Reply{200, KeyJson(rows[0])};
  });
  if (ctx.key_cache) ctx.key_cache->InvalidateKey(key_id);  // other replicas: the trigger's NOTIFY
  return reply;
}

}  // namespace spillway::handlers
