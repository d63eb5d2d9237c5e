#include "apiserver/handlers/ssh_keys.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/handlers/common.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/ssh_keys.hpp"
#include "provisioning/ssh_keys.hpp"

namespace spillway::handlers {
namespace {

boost::json::object SshKeyJson(const SshKey& k) {
  return {{"id", k.id},
          {"tenant_id", k.tenant_id},
          {"name", k.name},
          {"type", k.key_type},
          {"bits", k.bits},
          {"fingerprint", k.fingerprint},
          {"public_key", k.public_key},
          {"created_at", FormatTime(k.created_at)}};
}

}  // namespace

Reply CreateSshKey(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"name", "public_key", "generate", "tenant_id"});
  const std::string tenant = ctx.OwnerTenant(OptString(body, "tenant_id", 64));
  const std::string name = ReqName(body, "name", 100);
  const auto* generate_v = body.if_contains("generate");
  if (generate_v && !generate_v->is_bool()) throw InvalidInput("generate: must be true or false");
  const bool generate = generate_v && generate_v->as_bool();
  const auto line = OptString(body, "public_key", 16384);
  if (generate == line.has_value())
    throw InvalidInput("public_key: give an OpenSSH public key, or \"generate\": true for a new key pair (not both)");
  std::optional<SshKeyPair> pair;
  SshPublicKey key;
  if (generate) {
    pair = GenerateSshKeyPair(name);
    key = pair->public_key;
  } else {
    std::string why;
    auto parsed = ParseSshPublicKey(*line, &why);
    if (!parsed) throw InvalidInput("public_key: " + why);
    key = std::move(*parsed);
  }
  return ctx.Write([&](Tx& tx) {
    RequireTenant(tx, tenant);
    const SshKey added = AddSshKey(tx, tenant, name, key, ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(tenant, "ssh_key.create", added.id));
    auto json = SshKeyJson(added);
    if (pair) json["private_key"] = pair->private_key;  // this once: only the public half is kept
    return Reply{201, std::move(json)};
  });
}

Reply ListSshKeys(Ctx& ctx) {
  const std::string tenant = ctx.OwnerTenantFromQuery();
  const int limit = ctx.Limit();
  const std::string cursor = ctx.Query("cursor");
  if (!cursor.empty() && !IsValidId(cursor, "ssh"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  const auto keys = ctx.Read([&](Tx& tx) {
    RequireTenant(tx, tenant);
    return spillway::ListSshKeys(tx, tenant, cursor, limit + 1);
  });
  return {200, Page(keys, limit, SshKeyJson)};
}

Reply GetSshKey(Ctx& ctx) {
  const std::string tenant = ctx.OwnerTenantFromQuery();
  const std::string& id = ctx.Param("id");
  if (!IsValidId(id, "ssh")) throw ApiError(404, "not_found", "no such SSH key");
  const auto key = ctx.Read([&](Tx& tx) { return FindSshKey(tx, tenant, id); });
  if (!key) throw ApiError(404, "not_found", "no such SSH key");
  return {200, SshKeyJson(*key)};
}

Reply DeleteSshKey(Ctx& ctx) {
  const std::string tenant = ctx.OwnerTenantFromQuery();
  const std::string& id = ctx.Param("id");
  if (!IsValidId(id, "ssh")) throw ApiError(404, "not_found", "no such SSH key");
  return ctx.Write([&](Tx& tx) {
    const auto deleted = spillway::DeleteSshKey(tx, tenant, id);
    if (!deleted) throw ApiError(404, "not_found", "no such SSH key");
    RecordAudit(tx, ctx.AuditOf(tenant, "ssh_key.delete", id));
    return Reply{200, SshKeyJson(*deleted)};
  });
}

}  // namespace spillway::handlers
