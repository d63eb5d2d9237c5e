#pragma once
// The fleet's rules, in SQL transactions: pool accounting, placement, preemption, instance ends,
// agent heartbeats and the controllers' periodic steps. Handlers and controllers call these with
// their own transaction, so each change commits whole or not at all.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "billing/spot_curve.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db_fwd.hpp"
#include "protocol/agent.hpp"
#include "provisioning/words.hpp"

namespace spillway {

struct FleetMetrics;

// Lock order, everywhere (deadlocks are bugs): an idempotency key's advisory lock, then the tenant
// row, then the pool's lock (LockPool), then hosts in ascending id, then instances (only under their
// host's lock, in ascending id where several), then gpu_allocations and the rest. A transaction
// that needs an instance's host reads the host id first without a lock, locks the host, then the
// instance, and checks the host did not change. Every writer runs in InTransaction, which retries
// a lost race.
struct SilenceRules {
  Millis timeout{30000};             // fleet.heartbeat_timeout
  std::int64_t brake_percent = 50;   // fleet.silence_brake_percent
  std::int64_t brake_min_hosts = 3;  // fleet.silence_brake_min_hosts
};

// The fleet's configuration (fleet.*, spot.*, controllers.tick, agent intervals), read and checked
// once at start-up: the rules never look a key up by name.
struct FleetSettings {
  SilenceRules silence;
  Millis instance_report_grace{60000};
  Millis assignment_wait_max{60000};
  Millis heartbeat_flush_interval{250};
  Millis heartbeat_interval{5000}, sample_interval{10000};  // told to agents at registration
  Millis tick{1000};
  Millis reprice_interval{30000};
  Millis preemption_notice{120000};
  Millis suspension_grace{24 * 3600 * 1000};  // tenants.suspension_grace
  SpotPolicy spot;
  // Throws ConfigError naming the key (a discount curve that does not parse, say).
  static FleetSettings From(const Config& config);
};

class SecretBox;

struct FleetContext {
  const FleetSettings& settings;
  FleetMetrics* metrics = nullptr;  // may be null (tools, tests)
  const Clock& clock = SystemClockInstance();
  const SecretBox* secrets = nullptr;  // seals env values at launch (LaunchInstance needs it)
};

struct HostSlot {
  std::string id;
  std::int64_t gpu_count = 0;
  bool placeable = false;       // state active and health up
  bool draining = false;        // state draining and health up: keeps its instances, takes no new ones
  std::vector<int> free;        // GPU indices with no allocation
  std::int64_t claimed = 0;     // GPUs promised to pending instances waiting on this host
  std::int64_t leaving = 0;     // GPUs of spot instances under preemption notice (free soon)
  std::string cuda_version;     // the newest CUDA its driver supports ("" when it did not say)
  std::int64_t free_ports = 0;  // external ports it can still map to instances
  std::int64_t FreeEffective() const { return static_cast<std::int64_t>(free.size()) - claimed; }
};

struct SpotHolder {
  std::string id, host_id;
  std::int64_t gpus = 0;
  std::optional<std::int64_t> max_price_micros;
};

// A pool is (region, gpu_model). GPU counts: total on hosts that are up and not disabled; the
// operator's internal reservation; live on-demand instances; live spot instances (active ones and
// those leaving under preemption notice).
struct PoolState {
  std::string region, gpu_model;
  std::vector<HostSlot> hosts;
  std::int64_t total = 0, reserved = 0, on_demand = 0, spot_active = 0, spot_leaving = 0;
  std::int64_t draining_idle = 0;  // free GPUs on draining hosts: counted in total, never offered
  std::int64_t largest_host = 0;   // the most GPUs any one host here has
  std::int64_t Offerable() const { return total - draining_idle; }
  std::vector<SpotHolder> spot;  // active spot instances, cheapest bid first, then newest
  std::int64_t Spare() const;
  // Some host here could ever hold `gpus` GPUs on its own (placeable or not right now).
  bool Offers(std::int64_t gpus) const;
};

// Every pool that has a host: (region, gpu_model), in order.
std::vector<std::pair<std::string, std::string>> AllPools(Tx& tx);

// Takes the pool's lock (a transaction-scoped advisory lock, after the tenant row and before any
// host in the lock order). Every change to the pool's allocations, reservation or spot price holds it.
void LockPool(Tx& tx, const std::string& region, const std::string& gpu_model);
// Reads the pool; with lock=true it takes the pool's lock and locks its hosts FOR UPDATE (in id
// order), for the paths that may preempt anywhere in it.
PoolState LoadPool(Tx& tx, const std::string& region, const std::string& gpu_model, bool lock);
// The pool's counts only (no hosts, no spot list), in one aggregate: what placement checks first.
PoolState LoadPoolCounts(Tx& tx, const std::string& region, const std::string& gpu_model);

// A pool as the read-only pages show it (the catalog, capacity): its counts, its hosts, and its
// placeable hosts grouped by what they could take. Two aggregates, never a row per host or GPU:
// at 10,000 hosts the whole pool is 10,000 host rows and 80,000 GPU rows to read and parse.
struct PoolView {
  PoolState counts;  // as LoadPoolCounts (no hosts, no spot list)
  std::int64_t hosts = 0, placeable_hosts = 0;
  // Placeable hosts with `free` effectively free GPUs (free, less those promised to pending
  // instances) and `reclaimable` GPUs held by spot instances (under notice or not): `hosts` of them.
  struct Bucket {
    std::int64_t free = 0, reclaimable = 0, hosts = 0;
  };
  std::vector<Bucket> placeable;
  // How many instances of `gpus` GPUs fit, each on one host: on free GPUs (what spot gets), and on
  // free GPUs or those spot holds (what on-demand gets, preempting spot). Only hosts that take work
  // now (active and up) count: draining and down hosts offer nothing.
  std::int64_t FitsOnFree(std::int64_t gpus) const;
  std::int64_t FitsPreemptingSpot(std::int64_t gpus) const;
};
PoolView LoadPoolView(Tx& tx, const std::string& region, const std::string& gpu_model);


struct PlacementPlan {
  std::optional<InstanceState> state;  // kProvisioning (GPUs allocated now) or kPending (waiting for preempted spot)
  std::string host_id;
  std::vector<int> gpu_indices;
  std::vector<SpotHolder> victims;  // spot instances to preempt to make room
};
// What an instance needs of a host beyond its GPUs.
struct PlacementNeeds {
  std::int64_t gpus = 0;
  Market market = Market::kOnDemand;
  std::optional<std::string> min_cuda = std::nullopt;  // the host's CUDA at least this
  std::int64_t ports = 0;                              // external ports to map
};
// Whether the host could take the instance but for its GPUs being free (CUDA, ports).
bool HostMeets(const HostSlot& host, const PlacementNeeds& needs);
// Chooses where an instance goes (all on one host that meets its needs, best fit); throws ApiError
// 409 insufficient_capacity saying what would fit when it cannot go anywhere. Nothing is written.
PlacementPlan PlanPlacement(const PoolState& pool, const PlacementNeeds& needs);
PlacementPlan PlanPlacement(const PoolState& pool, std::int64_t gpus, Market market);
// Placement on free GPUs without the pool's hosts in memory, under the pool's lock: refuses (409)
// what the counts already refuse, chooses the best-fit host in SQL and locks only it. nullopt when
// the launch needs more (spot to preempt, or no host has the GPUs free): plan it with PlanPlacement
// on LoadPool(lock=true), which also says why nothing fits.
std::optional<PlacementPlan> PlaceOnFreeGpus(Tx& tx, const PoolState& counts, const PlacementNeeds& needs);
// A new instance's plan, under the pool's lock from its counts: PlaceOnFreeGpus, else PlanPlacement
// on the whole pool (its hosts locked). Throws 409 insufficient_capacity as PlanPlacement does.
PlacementPlan PlanNewInstance(Tx& tx, const PoolState& counts, const PlacementNeeds& needs);
// Writes the plan for an instance row that already exists.
void ApplyPlacement(Tx& tx, const FleetContext& fc, const std::string& instance_id,
                    const PlacementPlan& plan);

// Tells the host's agent to look at its assignments again.
void BumpHost(Tx& tx, const std::string& host_id);
// Locks one host (FOR NO KEY UPDATE), first in the lock order; false when there is no such host.
bool LockHost(Tx& tx, const std::string& host_id);
// Locks an instance in the lock order: its host (read first without a lock), then the instance,
// looking again if it moved to another host meanwhile. nullopt when there is no such instance.
struct LockedInstance {
  std::string tenant_id;
  std::optional<std::string> host_id;
  InstanceState state = InstanceState::kPending;
};
std::optional<LockedInstance> LockInstance(Tx& tx, const std::string& id);
// A live spot instance enters its notice: state preempting, preempt_at = now + spot.preemption_notice.
void PreemptSpot(Tx& tx, const FleetContext& fc, const std::string& instance_id,
                 const std::string& reason);
// Ends an instance (terminated or failed) and frees its GPUs. The caller holds its host's lock.
// An end_reason set earlier (a termination's cause, given when it began) is kept.
void EndInstance(Tx& tx, const std::string& instance_id, InstanceState state,
                 const std::string& end_reason, TimeMs now = NowMs());

// PUT /v1/capacity/pools/{region}/{gpu_model}: sets the internal reservation, preempting spot
// instances as needed; 409 when it exceeds total − on-demand.
void SetReservation(Tx& tx, const FleetContext& fc, const std::string& region,
                    const std::string& gpu_model, std::int64_t reserved);

using ReportedInstance = protocol::ReportedInstance;  // starting | running | stopped | failed
// A heartbeat at `now`: marks the host up and moves its instances by what the agent reports.
std::int64_t RecordHeartbeat(Tx& tx, const std::string& host_id, const std::string& agent_version,
                             const std::vector<ReportedInstance>& reported, TimeMs now);

// What the silence rule looks at for one host.
struct HostHealth {
  std::string id, region;
  bool up = true;         // health
  bool disabled = false;  // state disabled: taken out by the operator, not judged
  bool braked = false;    // down by the brake (down_reason mass_silence): its instances were kept
  TimeMs last_heartbeat;
  std::optional<TimeMs> down_since;
};
struct SilenceVerdict {
  std::vector<std::string> fail;   // silent alone: mark down, fail their instances
  std::vector<std::string> brake;  // silent together with much of their region: mark down, keep instances
  std::vector<std::string> braking_regions;
};
// The silence rule, pure. A host is judged only on time in which the control plane could hear it:
// `heard_since` is when the judging leader began to lead with the database reachable, so an outage
// of the apiservers or of PostgreSQL is never blamed on the hosts. When more than brake_percent of
// a region's hosts (with at least brake_min_hosts) are quiet together (up but silent for half the
// timeout, or down within the last timeout), the region brakes: its silent hosts are marked down
// without failing their instances, as Kubernetes' node-lifecycle controller stops evicting when a
// zone is mostly unreachable.
SilenceVerdict JudgeSilence(const std::vector<HostHealth>& hosts, TimeMs now, TimeMs heard_since,
                            const SilenceRules& rules);

// One spot-pricer pass over one pool (or every pool when region is empty): appends a new price when
// it changed and preempts spot instances whose max price is now below it. Returns prices written.
int Reprice(Session& conn, const FleetContext& fc, const std::string& region = "",
            const std::string& gpu_model = "");
// A pool whose capacity changed, to be priced at the leader's next tick (in the change's transaction;
// a storm of registrations into one pool marks it once).
void MarkPoolToReprice(Tx& tx, const std::string& region, const std::string& gpu_model);
// The leader's pass over the marked pools, each priced once and its mark taken in the same transaction.
int RepriceMarkedPools(Session& conn, const FleetContext& fc);
// The leader's fold of the hosts' capacity changes into each pool's kept total
// (migrations/0025_keep_pool_capacity.sql), once a tick. Returns the pools whose total it moved.
std::int64_t FoldPoolCapacity(Session& conn);

// The controllers' periodic steps; each returns how many instances or hosts it changed.
// `heard_since`: see JudgeSilence.
int FailSilentHosts(Session& conn, const FleetContext& fc, TimeMs heard_since);
int FinishPreemptions(Session& conn, const FleetContext& fc);
int PlacePending(Session& conn, const FleetContext& fc);
// Instances their (up) host stopped reporting for fleet.instance_report_grace of heard time.
int FailUnreportedInstances(Session& conn, const FleetContext& fc, TimeMs heard_since);
// Terminates (end_reason "tenant_suspended") the live instances of tenants suspended for longer
// than tenants.suspension_grace, audited as the system's act. Returns how many it ended or stopped.
int EndSuspendedTenantsInstances(Session& conn, const FleetContext& fc);
void RefreshFleetGauges(Session& conn, const FleetContext& fc);


}  // namespace spillway
