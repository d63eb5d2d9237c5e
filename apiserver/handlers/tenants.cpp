#include "apiserver/handlers/tenants.hpp"

#include <boost/json.hpp>

#include "apiserver/audit.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "apiserver/handlers/common.hpp"
#include "core/clock.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"

namespace spillway::handlers {
namespace {

#define SPW_TENANT_COLUMNS                                                                              \
  "id, name, status, gpu_quota, is_operator, "                                                          \
  "(extract(epoch FROM created_at) * 1000)::bigint, (extract(epoch FROM updated_at) * 1000)::bigint, "  \
  "(SELECT COALESCE(sum(i.gpus), 0) FROM instances i WHERE i.tenant_id = tenants.id "                   \
  "AND i.state NOT IN ('terminated', 'failed'))::bigint AS gpus_in_use"

const Statement kInsertTenant{"insert_tenant",
                              "INSERT INTO tenants (id, name, gpu_quota) VALUES ($1, $2, $3) "
                              "RETURNING " SPW_TENANT_COLUMNS};
const Statement kGetTenant{"get_tenant", "SELECT " SPW_TENANT_COLUMNS " FROM tenants WHERE id = $1"};
const Statement kLockTenant{"lock_tenant", "SELECT is_operator FROM tenants WHERE id = $1 FOR UPDATE"};
const Statement kListTenants{"list_tenants",
                             "SELECT " SPW_TENANT_COLUMNS " FROM tenants "
                             "WHERE id > $1 AND ($2 = '' OR status = $2) ORDER BY id LIMIT $3"};
const Statement kUpdateTenant{"update_tenant",
                              "UPDATE tenants SET name = COALESCE(NULLIF($2, ''), name), "
                              "status = COALESCE(NULLIF($3, ''), status), "
                              "gpu_quota = CASE WHEN $4::integer < 0 THEN gpu_quota ELSE $4::integer END, "
                              "updated_at = now() WHERE id = $1 RETURNING " SPW_TENANT_COLUMNS};
const Statement kFindOperator{"find_operator_tenant", "SELECT id FROM tenants WHERE is_operator"};
const Statement kInsertOperator{"insert_operator_tenant",
                                "INSERT INTO tenants (id, name, is_operator) VALUES ($1, $2, true) "
                                "ON CONFLICT (is_operator) WHERE is_operator DO NOTHING"};

boost::json::object TenantJson(const pqxx::row& r) {
  return {{"id", r[0].as<std::string>()},
          {"name", r[1].as<std::string>()},
          {"status", r[2].as<std::string>()},
          {"gpu_quota", r[3].as<std::int64_t>()},
          {"is_operator", r[4].as<bool>()},
          {"created_at", FormatTime(TimeMs(std::chrono::milliseconds(r[5].as<std::int64_t>())))},
          {"updated_at", FormatTime(TimeMs(std::chrono::milliseconds(r[6].as<std::int64_t>())))},
          {"gpus_in_use", r["gpus_in_use"].as<std::int64_t>()}};
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
  return ctx.Write([&](pqxx::transaction_base& tx) {
    pqxx::result r;
    try {
      r = tx.exec_prepared(kInsertTenant.name, id, name, quota);
    } catch (const pqxx::unique_violation&) {
      throw NameTaken(name);
    }
    Audit(tx, ctx, id, "tenant.create", id);
    return Reply{201, TenantJson(r[0])};
  });
}

Reply ListTenants(Ctx& ctx) {
  const int limit = ctx.Limit();
  const std::string cursor = ctx.Query("cursor");
  if (!cursor.empty() && !IsValidId(cursor, "ten"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  const std::string status = ctx.Query("status");
  if (!status.empty() && status != "active" && status != "suspended")
    throw ApiError(400, "invalid_parameter", "status must be active or suspended");
  pqxx::nontransaction tx(ctx.conn);
  const auto rows = tx.exec_prepared(kListTenants.name, cursor, status, limit + 1);
  return {200, Page(rows, limit, TenantJson)};
}

Reply GetTenant(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  pqxx::nontransaction tx(ctx.conn);
  const auto rows = IsValidId(id, "ten") ? tx.exec_prepared(kGetTenant.name, id) : pqxx::result();
  if (rows.empty()) throw ApiError(404, "not_found", "no such tenant");
  return {200, TenantJson(rows[0])};
}

Reply UpdateTenant(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"name", "status", "gpu_quota"});
  const std::string name = OptName(body, "name", 200).value_or("");
  const std::string status = OptString(body, "status", 20).value_or("");
  if (!status.empty() && status != "active" && status != "suspended")
    throw ApiError(422, "validation_failed", "status: must be active or suspended");
  const std::int64_t quota = OptInt(body, "gpu_quota", 0, kMaxQuota).value_or(-1);
  if (name.empty() && status.empty() && quota < 0)
    throw ApiError(422, "validation_failed", "nothing to change: give name, status or gpu_quota");

  if (!IsValidId(id, "ten")) throw ApiError(404, "not_found", "no such tenant");
  auto reply = ctx.Write([&](pqxx::transaction_base& tx) {
    const auto lock = tx.exec_prepared(kLockTenant.name, id);
    if (lock.empty()) throw ApiError(404, "not_found", "no such tenant");
    if (status == "suspended" && lock[0][0].as<bool>())
      throw ApiError(409, "operator_tenant", "the operator's own tenant cannot be suspended");
    pqxx::result r;
    try {
      r = tx.exec_prepared(kUpdateTenant.name, id, name, status, quota);
    } catch (const pqxx::unique_violation&) {
      throw NameTaken(name);
    }
    Audit(tx, ctx, id, "tenant.update", id);
    auto json = TenantJson(r[0]);
    // Allowed (it blocks new launches, running instances stay), but said plainly.
    const std::int64_t in_use = r[0]["gpus_in_use"].as<std::int64_t>(), new_quota = r[0]["gpu_quota"].as<std::int64_t>();
    if (quota >= 0 && in_use > new_quota)
      json["warnings"] = boost::json::array{boost::json::value(
          "gpu_quota " + std::to_string(new_quota) + " is below the " + std::to_string(in_use) +
          " GPUs in use: running instances keep running, new launches are refused until usage falls below it")};
    return Reply{200, std::move(json)};
  });
  if (!status.empty() && ctx.key_cache) ctx.key_cache->InvalidateTenant(id);  // other replicas: NOTIFY
  return reply;
}

std::string EnsureOperatorTenant(pqxx::transaction_base& tx, const std::string& name) {
  auto rows = tx.exec_prepared(kFindOperator.name);
  if (!rows.empty()) return rows[0][0].as<std::string>();
  const std::string id = NewId("ten");
  tx.exec_prepared(kInsertOperator.name, id, name);
  rows = tx.exec_prepared(kFindOperator.name);
  if (rows.empty()) throw std::runtime_error("could not create the operator tenant");
  if (rows[0][0].as<std::string>() == id) AuditSystem(tx, id, "tenant.create", id);
  return rows[0][0].as<std::string>();
}

}  // namespace spillway::handlers
