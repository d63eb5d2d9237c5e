#pragma once
// Tenants: who buys GPUs, their status and quota. The store maps each row to a Tenant by column name.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway {

class Statement;
class PgResult;

enum class TenantStatus { kActive, kSuspended };
const char* ToString(TenantStatus s);
std::optional<TenantStatus> ParseTenantStatus(std::string_view s);

struct Tenant {
  std::string id, name;
  TenantStatus status = TenantStatus::kActive;
  std::int64_t gpu_quota = 0;
  bool is_operator = false;
  TimeMs created_at, updated_at;
  std::optional<TimeMs> suspended_at;  // set while suspended
  std::int64_t gpus_in_use = 0;        // GPUs of its live instances
};

// The store. Each runs in the caller's transaction.
std::optional<Tenant> FindTenant(Tx& tx, const std::string& id);
// The tenant, or ApiError 404 "no such tenant" (a string that is no tenant id is never looked up).
Tenant RequireTenant(Tx& tx, const std::string& id);
// The same read without blocking, on an io thread (core/pg_async): the statement to send with the
// id as its one parameter, and the tenant in its answer.
const Statement& FindTenantStatement();
std::optional<Tenant> FoundTenant(const PgResult& rows);
// Page of tenants with id > after (all when after is empty), by id.
std::vector<Tenant> ListTenants(Tx& tx, const std::string& after, std::optional<TenantStatus> status, int limit);
// nullopt: the name is taken (the transaction is then aborted, as for any unique violation).
std::optional<Tenant> InsertTenant(Tx& tx, const std::string& id, const std::string& name, std::int64_t gpu_quota);
// Locks the row FOR UPDATE (first in the lock order after an idempotency key).
std::optional<Tenant> LockTenant(Tx& tx, const std::string& id);
struct TenantChange {
  std::optional<std::string> name;
  std::optional<TenantStatus> status;
  std::optional<std::int64_t> gpu_quota;
};
// nullopt: the new name is taken (transaction aborted). The tenant must exist (locked by the caller).
std::optional<Tenant> UpdateTenant(Tx& tx, const std::string& id, const TenantChange& change, TimeMs now);
// The quota, with the row locked FOR NO KEY UPDATE so concurrent launches by one tenant queue here.
std::optional<std::int64_t> LockTenantQuota(Tx& tx, const std::string& id);
// GPUs held by the tenant's live instances. Run after LockTenantQuota, in its own statement: under
// READ COMMITTED it then sees everything committed by whoever held the lock before.
std::int64_t TenantGpusInUse(Tx& tx, const std::string& id);
// Tenants suspended at or before `cutoff` that still have live instances.
std::vector<std::string> SuspendedWithLiveInstances(Tx& tx, TimeMs cutoff);
// The operator's own tenant, created (and audited) when missing; returns its id.
std::string EnsureOperatorTenant(Tx& tx, const std::string& name);

}  // namespace spillway
