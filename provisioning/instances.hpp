#pragma once
// Instances: the store (rows mapped to Instance by column name) and the two things a tenant does
// to one, launch and terminate, as rules over the pool (fleet.hpp).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db_fwd.hpp"
#include "provisioning/launch_spec.hpp"
#include "provisioning/words.hpp"

namespace spillway {

struct FleetContext;
class Statement;
class PgResult;

struct Instance {
  std::string id, tenant_id;
  std::optional<std::string> name;
  std::string instance_type, gpu_model, region;
  Market market = Market::kOnDemand;
  std::optional<std::int64_t> max_price_micros;
  InstanceState state = InstanceState::kPending;
  std::int64_t gpus = 0;
  std::optional<std::string> host_id;
  std::vector<int> gpu_indices;
  TimeMs created_at;
  std::optional<TimeMs> started_at, ended_at, preempt_at;
  std::optional<std::string> end_reason, preempt_reason;
  // Pending only: when the spot instances it waits for reach the end of their notice.
  std::optional<TimeMs> expected_placement_at;
  InstanceAccess access;  // its launch spec as shown (env names only) and where it is reached
};

struct InstanceFilter {
  std::string tenant_id, host_id;  // "" = any
  std::optional<InstanceState> state;
  std::optional<Market> market;
  std::string after;  // page cursor: ids greater than this
  int limit = 50;
};
std::vector<Instance> ListInstances(Tx& tx, const InstanceFilter& filter);
std::optional<Instance> FindInstance(Tx& tx, const std::string& id);
// The same reads without blocking, on an io thread (core/pg_async): the statement to send, its
// parameters (the id; the filter's), and what its answer holds.
const Statement& FindInstanceStatement();
std::optional<Instance> FoundInstance(const PgResult& rows);
const Statement& ListInstancesStatement();
std::vector<std::string> ListInstancesValues(const InstanceFilter& filter);
std::vector<Instance> FoundInstances(const PgResult& rows);
// The tenant's live instances not already terminating (all of them, however many).
std::vector<std::string> InstancesToStop(Tx& tx, const std::string& tenant_id);

struct LaunchRequest {
  std::string tenant_id;
  const InstanceType* type = nullptr;
  std::string region;
  Market market = Market::kOnDemand;
  std::string name;                             // "" = none
  std::optional<std::int64_t> max_price_micros; // spot only
  LaunchSpec spec;                              // what runs, and how it is reached
};
// Checks the tenant's quota (the tenant row locked, so concurrent launches queue), the region and
// the pool, places the instance (or leaves it pending behind preempted spot) and returns it.
// Throws InvalidInput for a spec that breaks a rule or names what the tenant does not have; ApiError:
// 409 quota_exceeded, 422 instance_type_not_offered, 409 volume_region_mismatch, 409 volume_attached,
// 409 insufficient_capacity (saying what would fit), 409 max_price_below_spot_price.
Instance LaunchInstance(Tx& tx, const FleetContext& fc, const LaunchRequest& request);

struct TerminateOutcome {
  Instance instance;
  bool changed = false;  // false: it was already on its way out (answered again, changes nothing)
};
// Terminates the instance (only if it belongs to tenant_id, when that is not empty); nullopt when
// there is none. Follows the lock order: its host, then it.
std::optional<TerminateOutcome> TerminateInstance(Tx& tx, const std::string& id, const std::string& tenant_id,
                                                  const std::string& end_reason, TimeMs now);
// Ends what the instance is billed for now (its open GPU holds in gpu_allocation_history), without
// waiting for its host to confirm the stop: for a stop for funds, whose bound must hold while the
// host cannot be heard. Its GPUs stay allocated (placement) until the host reports them free, and
// samples past this are nobody's (ingest attributes only time inside a hold).
void EndBillingNow(Tx& tx, const std::string& instance_id);

}  // namespace spillway
