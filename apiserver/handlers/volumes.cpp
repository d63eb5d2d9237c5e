#include "apiserver/handlers/volumes.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/handlers/common.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "provisioning/volumes.hpp"

namespace spillway::handlers {
namespace {

boost::json::object VolumeJson(const Volume& v) {
  return {{"id", v.id},
          {"tenant_id", v.tenant_id},
          {"name", v.name},
          {"region", v.region},
          {"size_gb", v.size_gb},
          {"state", v.attached_instance_id ? "attached" : "available"},
          {"attached_instance_id", JsonText(v.attached_instance_id)},
          {"created_at", FormatTime(v.created_at)}};
}

}  // namespace

Reply CreateVolume(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"name", "region", "size_gb", "tenant_id"});
  const std::string tenant = ctx.OwnerTenant(OptString(body, "tenant_id", 64));
  const std::string name = ReqName(body, "name", 100);
  const std::string region = ReqString(body, "region", 100);
  const auto size = OptInt(body, "size_gb", 1, 65536);
  if (!size) throw InvalidInput("size_gb: is required (1 to 65536)");
  return ctx.Write([&](Tx& tx) {
    if (!IsValidId(tenant, "ten") || !FindTenant(tx, tenant)) throw ApiError(404, "not_found", "no such tenant");
    const Volume v = spillway::CreateVolume(tx, tenant, name, region, static_cast<int>(*size), ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(tenant, "volume.create", v.id));
    return Reply{201, VolumeJson(v)};
  });
}

Reply ListVolumes(Ctx& ctx) {
  const std::string tenant = ctx.OwnerTenantFromQuery();
  const int limit = ctx.Limit();
  const std::string cursor = ctx.Query("cursor");
  if (!cursor.empty() && !IsValidId(cursor, "vol"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  const auto volumes = ctx.Read([&](Tx& tx) { return spillway::ListVolumes(tx, tenant, cursor, limit + 1); });
  return {200, Page(volumes, limit, VolumeJson)};
}

Reply GetVolume(Ctx& ctx) {
  const std::string tenant = ctx.OwnerTenantFromQuery();
  const std::string& id = ctx.Param("id");
  if (!IsValidId(id, "vol")) throw ApiError(404, "not_found", "no such volume");
  const auto v = ctx.Read([&](Tx& tx) { return FindVolume(tx, tenant, id); });
  if (!v) throw ApiError(404, "not_found", "no such volume");
  return {200, VolumeJson(*v)};
}

Reply DeleteVolume(Ctx& ctx) {
  const std::string tenant = ctx.OwnerTenantFromQuery();
  const std::string& id = ctx.Param("id");
  if (!IsValidId(id, "vol")) throw ApiError(404, "not_found", "no such volume");
  return ctx.Write([&](Tx& tx) {
    const auto v = spillway::DeleteVolume(tx, tenant, id, ctx.clock.Now());
    if (!v) throw ApiError(404, "not_found", "no such volume");
    RecordAudit(tx, ctx.AuditOf(tenant, "volume.delete", id));
    auto json = VolumeJson(*v);
    json["state"] = "deleted";
    return Reply{200, std::move(json)};
  });
}

}  // namespace spillway::handlers
