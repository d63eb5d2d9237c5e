#include "apiserver/handlers/api_keys.hpp"

#include <boost/json.hpp>

#include "accounts/api_keys.hpp"
#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "apiserver/handlers/common.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"

namespace spillway::handlers {
namespace {

boost::json::object KeyJson(const ApiKey& k) {
  return {{"id", k.id},
          {"tenant_id", k.tenant_id},
          {"role", k.role},
          {"name", JsonText(k.name)},
          {"created_at", FormatTime(k.created_at)},
          {"revoked_at", JsonTime(k.revoked_at)},
          {"last_used_at", JsonTime(k.last_used_at)}};
}

// The tenant, or 404 (a member reaches only its own: the route checks that first).
Tenant RequireTenantRow(Tx& tx, const std::string& tenant_id) {
  const auto t = IsValidId(tenant_id, "ten") ? FindTenant(tx, tenant_id) : std::nullopt;
  if (!t) throw ApiError(404, "not_found", "no such tenant");
  return *t;
}

}  // namespace

Reply CreateApiKey(Ctx& ctx) {
  const std::string& tenant_id = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"role", "name"});
  const std::string role = ReqString(body, "role", 20);
  if (!IsKeyRole(RoleBit(role)))
    throw ApiError(422, "validation_failed", "role: must be one of admin, finance, operator, member");
  // A member manages its own tenant's keys and can never raise a role.
  if (ctx.principal.role_bit == kMember && role != "member")
    throw ApiError(403, "forbidden", "a member can create member keys only");
  const std::string name = OptName(body, "name", 200).value_or("");

  return ctx.Write([&](Tx& tx) {
    if (!RequireTenantRow(tx, tenant_id).is_operator && role != "member")
      throw ApiError(422, "role_not_allowed", "a customer tenant's keys can only have the member role");
    const auto issued = IssueApiKey(tx, tenant_id, role, name);
    RecordAudit(tx, ctx.AuditOf(tenant_id, "api_key.create", issued.key.id));
    auto json = KeyJson(issued.key);
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
  const auto keys = ctx.Read([&](Tx& tx) {
    RequireTenantRow(tx, tenant_id);
    return spillway::ListApiKeys(tx, tenant_id, cursor, limit + 1);
  });
  return {200, Page(keys, limit, KeyJson)};
}

Reply RevokeApiKey(Ctx& ctx) {
  const std::string& tenant_id = ctx.Param("id");
  const std::string& key_id = ctx.Param("key_id");
  if (!IsValidId(key_id, "key")) throw ApiError(404, "not_found", "no such API key");
  auto reply = ctx.Write([&](Tx& tx) {
    if (const auto revoked = spillway::RevokeApiKey(tx, tenant_id, key_id)) {
      RecordAudit(tx, ctx.AuditOf(tenant_id, "api_key.revoke", key_id));
      return Reply{200, KeyJson(*revoked)};
    }
    // Revoked already: answering again changes nothing and is not audited twice.
    const auto existing = FindApiKey(tx, tenant_id, key_id);
    if (!existing) throw ApiError(404, "not_found", "no such API key");
    return Reply{200, KeyJson(*existing)};
  });
  if (ctx.key_cache) ctx.key_cache->InvalidateKey(key_id);  // other replicas: the trigger's NOTIFY
  return reply;
}

}  // namespace spillway::handlers
