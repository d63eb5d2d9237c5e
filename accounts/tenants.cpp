#include "accounts/tenants.hpp"

#include <pqxx/pqxx>

#include "accounts/audit.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/pg_async.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

// When the current suspension began: suspended_at, set by the API; a suspension written by hand
// without it counts from updated_at. NULL while active.
#define SPW_SUSPENDED_SINCE "CASE WHEN status = 'suspended' THEN COALESCE(suspended_at, updated_at) END"

#define SPW_TENANT_COLUMNS                                                                              \
  "id, name, status, gpu_quota, is_operator, " SPW_EPOCH_MS("created_at") " AS created_ms, "            \
  SPW_EPOCH_MS("updated_at") " AS updated_ms, " SPW_EPOCH_MS(SPW_SUSPENDED_SINCE) " AS suspended_ms, "  \
  "(SELECT COALESCE(sum(i.gpus), 0) FROM instances i WHERE i.tenant_id = tenants.id "                   \
  "AND instance_is_live(i.state))::bigint AS gpus_in_use"

const Statement kInsertTenant{"insert_tenant",
                              "INSERT INTO tenants (id, name, gpu_quota) VALUES ($1, $2, $3) "
                              "RETURNING " SPW_TENANT_COLUMNS};
const Statement kGetTenant{"get_tenant", "SELECT " SPW_TENANT_COLUMNS " FROM tenants WHERE id = $1"};
const Statement kLockTenant{"lock_tenant", "SELECT " SPW_TENANT_COLUMNS " FROM tenants WHERE id = $1 FOR UPDATE"};
const Statement kListTenants{"list_tenants",
                             "SELECT " SPW_TENANT_COLUMNS " FROM tenants "
                             "WHERE id > $1 AND ($2 = '' OR status = $2) ORDER BY id LIMIT $3"};
// suspended_at records when a suspension began (the grace before instances end counts from it);
// resuming clears it.
const Statement kUpdateTenant{"update_tenant", R"sql(
UPDATE tenants SET name = COALESCE($2, name), status = COALESCE($3, status),
       gpu_quota = COALESCE($4::integer, gpu_quota),
       suspended_at = CASE WHEN $3 IS NULL OR $3 = status THEN suspended_at
                           WHEN $3 = 'suspended' THEN $5::timestamptz ELSE NULL END,
       updated_at = $5::timestamptz
WHERE id = $1 RETURNING )sql" SPW_TENANT_COLUMNS};
const Statement kLockQuota{"lock_tenant_quota", "SELECT gpu_quota FROM tenants WHERE id = $1 FOR NO KEY UPDATE"};
const Statement kGpusInUse{"tenant_gpus_in_use",
                           "SELECT COALESCE(sum(gpus), 0)::bigint AS in_use FROM instances "
                           "WHERE tenant_id = $1 AND instance_is_live(state)"};
const Statement kSuspendedWithLive{"suspended_tenants_with_live_instances",
                                   "SELECT id FROM tenants WHERE " SPW_SUSPENDED_SINCE " <= $1::timestamptz "
                                   "AND EXISTS (SELECT 1 FROM instances i WHERE i.tenant_id = tenants.id "
                                   "AND instance_is_live(i.state)) ORDER BY id"};
const Statement kFindOperator{"find_operator_tenant", "SELECT id FROM tenants WHERE is_operator"};
const Statement kInsertOperator{"insert_operator_tenant",
                                "INSERT INTO tenants (id, name, is_operator) VALUES ($1, $2, true) "
                                "ON CONFLICT (is_operator) WHERE is_operator DO NOTHING"};

// One mapping for a libpqxx row and for an io thread's non-blocking read (PgRow).
template <class Row>
Tenant TenantFrom(const Row& r) {
  Tenant t;
  t.id = r["id"].template as<std::string>();
  t.name = r["name"].template as<std::string>();
  t.status = ParseTenantStatus(r["status"].template as<std::string>()).value_or(TenantStatus::kSuspended);
  t.gpu_quota = r["gpu_quota"].template as<std::int64_t>();
  t.is_operator = r["is_operator"].template as<bool>();
  t.created_at = TimeFrom(r["created_ms"]).value_or(TimeMs{});
  t.updated_at = TimeFrom(r["updated_ms"]).value_or(TimeMs{});
  t.suspended_at = TimeFrom(r["suspended_ms"]);
  t.gpus_in_use = r["gpus_in_use"].template as<std::int64_t>();
  return t;
}

std::optional<Tenant> First(const pqxx::result& rows) {
  if (rows.empty()) return std::nullopt;
  return TenantFrom(rows[0]);
}

}  // namespace

const char* ToString(TenantStatus s) { return s == TenantStatus::kActive ? "active" : "suspended"; }

std::optional<TenantStatus> ParseTenantStatus(std::string_view s) {
  if (s == "active") return TenantStatus::kActive;
  if (s == "suspended") return TenantStatus::kSuspended;
  return std::nullopt;
}

std::optional<Tenant> FindTenant(Tx& tx, const std::string& id) { return First(tx.exec_prepared(kGetTenant.name, id)); }

Tenant RequireTenant(Tx& tx, const std::string& id) {
  auto t = IsValidId(id, "ten") ? FindTenant(tx, id) : std::nullopt;
  if (!t) throw ApiError(404, "not_found", "no such tenant");
  return std::move(*t);
}

const Statement& FindTenantStatement() { return kGetTenant; }
std::optional<Tenant> FoundTenant(const PgResult& rows) {
  if (rows.size() == 0) return std::nullopt;
  return TenantFrom(rows[0]);
}

std::vector<Tenant> ListTenants(Tx& tx, const std::string& after, std::optional<TenantStatus> status, int limit) {
  std::vector<Tenant> out;
  for (const auto& r : tx.exec_prepared(kListTenants.name, after, status ? ToString(*status) : "", limit))
    out.push_back(TenantFrom(r));
  return out;
}

std::optional<Tenant> InsertTenant(Tx& tx, const std::string& id, const std::string& name, std::int64_t gpu_quota) {
  try {
    return First(tx.exec_prepared(kInsertTenant.name, id, name, gpu_quota));
  } catch (const pqxx::unique_violation&) {
    return std::nullopt;
  }
}

std::optional<Tenant> LockTenant(Tx& tx, const std::string& id) { return First(tx.exec_prepared(kLockTenant.name, id)); }

std::optional<Tenant> UpdateTenant(Tx& tx, const std::string& id, const TenantChange& c, TimeMs now) {
  const std::optional<std::string> status = c.status ? std::optional<std::string>(ToString(*c.status)) : std::nullopt;
  try {
    return First(tx.exec_prepared(kUpdateTenant.name, id, c.name, status, c.gpu_quota, FormatTime(now)));
  } catch (const pqxx::unique_violation&) {
    return std::nullopt;
  }
}

std::optional<std::int64_t> LockTenantQuota(Tx& tx, const std::string& id) {
  const auto rows = tx.exec_prepared(kLockQuota.name, id);
  if (rows.empty()) return std::nullopt;
  return rows[0]["gpu_quota"].as<std::int64_t>();
}

std::int64_t TenantGpusInUse(Tx& tx, const std::string& id) {
  return tx.exec_prepared(kGpusInUse.name, id)[0]["in_use"].as<std::int64_t>();
}

std::vector<std::string> SuspendedWithLiveInstances(Tx& tx, TimeMs cutoff) {
  std::vector<std::string> out;
  for (const auto& r : tx.exec_prepared(kSuspendedWithLive.name, FormatTime(cutoff))) out.push_back(r["id"].as<std::string>());
  return out;
}

std::string EnsureOperatorTenant(Tx& tx, const std::string& name) {
  auto rows = tx.exec_prepared(kFindOperator.name);
  if (!rows.empty()) return rows[0]["id"].as<std::string>();
  const std::string id = NewId("ten");
  tx.exec_prepared(kInsertOperator.name, id, name);
  rows = tx.exec_prepared(kFindOperator.name);
  if (rows.empty()) throw std::runtime_error("could not create the operator tenant");
  const std::string got = rows[0]["id"].as<std::string>();
  if (got == id) RecordAudit(tx, SystemAudit(id, "tenant.create", id));
  return got;
}

}  // namespace spillway
