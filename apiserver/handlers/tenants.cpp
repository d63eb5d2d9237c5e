#include "apiserver/handlers/tenants.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "apiserver/handlers/common.hpp"
#include "core/clock.hpp"
#include "core/errors.hpp"
#include "core/duration.hpp"
#include "core/ids.hpp"
#include "provisioning/fleet.hpp"
#include "core/json.hpp"

namespace spillway::handlers {
namespace {

boost::json::object TenantJson(const Tenant& t) {
  return {{"id", t.id},
          {"name", t.name},
          {"status", ToString(t.status)},
          {"gpu_quota", t.gpu_quota},
          {"gpus_in_use", t.gpus_in_use},
          {"is_operator", t.is_operator},
          {"suspended_at", JsonTime(t.suspended_at)},
          {"created_at", FormatTime(t.created_at)},
          {"updated_at", FormatTime(t.updated_at)}};
}

ApiError NameTaken(const std::string& name) {
  return ApiError(409, "tenant_name_taken", "a tenant named \"" + name + "\" already exists");
}

constexpr std::int64_t kMaxQuota = 1'000'000;

}  // namespace

Reply CreateTenant(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"name", "gpu_quota"});
  const std::string name = ReqName(body, "name", 200);
  const std::int64_t quota = OptInt(body, "gpu_quota", 0, kMaxQuota).value_or(0);
  const std::string id = NewId("ten");
  return ctx.Write([&](Tx& tx) {
    const auto tenant = InsertTenant(tx, id, name, quota);
    if (!tenant) throw NameTaken(name);
    RecordAudit(tx, ctx.AuditOf(id, "tenant.create", id));
    return Reply{201, TenantJson(*tenant)};
  });
}

Reply ListTenants(Ctx& ctx) {
  const int limit = ctx.Limit();
  const std::string cursor = ctx.Query("cursor");
  if (!cursor.empty() && !IsValidId(cursor, "ten"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  const std::string status_text = ctx.Query("status");
  const auto status = ParseTenantStatus(status_text);
  if (!status_text.empty() && !status) throw ApiError(400, "invalid_parameter", "status must be active or suspended");
  const auto tenants = ctx.Read([&](Tx& tx) { return spillway::ListTenants(tx, cursor, status, limit + 1); });
  return {200, Page(tenants, limit, TenantJson)};
}

Reply GetTenant(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  const auto tenant = IsValidId(id, "ten") ? ctx.Read([&](Tx& tx) { return FindTenant(tx, id); }) : std::nullopt;
  if (!tenant) throw ApiError(404, "not_found", "no such tenant");
  return {200, TenantJson(*tenant)};
}

namespace {
// GetTenant's non-blocking form: the same rule (the route's tenant check, then a malformed id is
// 404), the same statement and the same JSON.
std::vector<std::string> GetTenantParams(const Principal& principal, const Params& params, const QueryParams&) {
  const std::string& id = params.at("id");
  RequireTenantOf(principal, id);
  if (!IsValidId(id, "ten")) throw ApiError(404, "not_found", "no such tenant");
  return {id};
}
Reply RenderTenant(const Principal&, const Params&, const QueryParams&, const PgResult& rows) {
  const auto tenant = FoundTenant(rows);
  if (!tenant) throw ApiError(404, "not_found", "no such tenant");
  return {200, TenantJson(*tenant)};
}
}  // namespace

const AsyncRead kGetTenantAsync{FindTenantStatement, GetTenantParams, RenderTenant};

Reply UpdateTenant(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"name", "status", "gpu_quota"});
  TenantChange change;
  change.name = OptName(body, "name", 200);
  if (const auto s = OptString(body, "status", 20)) {
    change.status = ParseTenantStatus(*s);
    if (!change.status) throw ApiError(422, "validation_failed", "status: must be active or suspended");
  }
  change.gpu_quota = OptInt(body, "gpu_quota", 0, kMaxQuota);
  if (!change.name && !change.status && !change.gpu_quota)
    throw ApiError(422, "validation_failed", "nothing to change: give name, status or gpu_quota");

  if (!IsValidId(id, "ten")) throw ApiError(404, "not_found", "no such tenant");
  auto reply = ctx.Write([&](Tx& tx) {
    const auto before = LockTenant(tx, id);
    if (!before) throw ApiError(404, "not_found", "no such tenant");
    if (change.status == TenantStatus::kSuspended && before->is_operator)
      throw ApiError(409, "operator_tenant", "the operator's own tenant cannot be suspended");
    const auto after = spillway::UpdateTenant(tx, id, change, ctx.clock.Now());
    if (!after) throw NameTaken(*change.name);
    RecordAudit(tx, ctx.AuditOf(id, "tenant.update", id));
    // A suspension and a resumption are audited as such: instances end after the grace unless resumed.
    if (before->status != after->status)
      RecordAudit(tx, ctx.AuditOf(id, after->status == TenantStatus::kSuspended ? "tenant.suspend" : "tenant.resume", id));
    auto json = TenantJson(*after);
    boost::json::array warnings;
    // Allowed (it blocks new launches, running instances stay), but said plainly.
    if (change.gpu_quota && after->gpus_in_use > after->gpu_quota)
      warnings.push_back(boost::json::value(
          "gpu_quota " + std::to_string(after->gpu_quota) + " is below the " + std::to_string(after->gpus_in_use) +
          " GPUs in use: running instances keep running, new launches are refused until usage falls below it"));
    if (before->status != after->status && after->status == TenantStatus::kSuspended && after->gpus_in_use > 0)
      warnings.push_back(boost::json::value(
          "the tenant's live instances are terminated " + FormatDuration(ctx.fleet->suspension_grace) +
          " after the suspension unless it is resumed before then"));
    if (!warnings.empty()) json["warnings"] = std::move(warnings);
    return Reply{200, std::move(json)};
  });
  if (change.status && ctx.key_cache) ctx.key_cache->InvalidateTenant(id);  // other replicas: NOTIFY
  return reply;
}

}  // namespace spillway::handlers
