#include "provisioning/fleet.hpp"

#include <algorithm>
#include <map>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <set>

#include "provisioning/fleet_metrics.hpp"
#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/log.hpp"
#include "core/money.hpp"
#include "core/sql.hpp"
#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "provisioning/instances.hpp"
#include "provisioning/launch_spec.hpp"
#include "provisioning/words.hpp"

namespace spillway {
namespace {

#define SPW_POOL_HOST_COLUMNS                                                                          \
  "id, gpu_count, state, health, coalesce(cuda_version, '') AS cuda_version, "                         \
  "coalesce(port_range_to - port_range_from + 1, 0) - (SELECT count(*) FROM instance_ports p "        \
  "WHERE p.host_id = hosts.id AND p.released_at IS NULL) AS free_ports "
const Statement kPoolHostsLocked{"pool_hosts_locked",
                                 "SELECT " SPW_POOL_HOST_COLUMNS "FROM hosts "
                                 "WHERE region = $1 AND gpu_model = $2 ORDER BY id FOR UPDATE"};
const Statement kPoolHosts{"pool_hosts",
                           "SELECT " SPW_POOL_HOST_COLUMNS "FROM hosts "
                           "WHERE region = $1 AND gpu_model = $2 ORDER BY id"};
const Statement kPoolFreeGpus{"pool_free_gpus", R"sql(
SELECT g.host_id, g.gpu_index FROM gpus g JOIN hosts h ON h.id = g.host_id
WHERE h.region = $1 AND h.gpu_model = $2
  AND NOT EXISTS (SELECT 1 FROM gpu_allocations a WHERE a.host_id = g.host_id AND a.gpu_index = g.gpu_index)
ORDER BY g.host_id, g.gpu_index)sql"};
const Statement kPoolLiveInstances{"pool_live_instances", R"sql(
SELECT id, host_id, gpus, market, state, max_price_micros FROM instances
WHERE region = $1 AND gpu_model = $2 AND instance_is_live(state)
ORDER BY max_price_micros ASC NULLS LAST, created_at DESC, id DESC)sql"};
const Statement kPoolReserved{"pool_reserved",
                              "SELECT internal_reserved_gpus FROM pool_reservations WHERE region = $1 AND gpu_model = $2"};
const Statement kBumpHost{"bump_host", "UPDATE hosts SET assignment_version = assignment_version + 1 WHERE id = $1"};
const Statement kAllocate{"allocate_gpu",
                          "INSERT INTO gpu_allocations (host_id, gpu_index, instance_id) VALUES ($1, $2, $3)"};
const Statement kSetPlaced{"set_instance_placed", R"sql(
UPDATE instances SET state = $2, host_id = $3, gpu_indices = $4::integer[], last_reported_at = $5::timestamptz,
       version = version + 1
WHERE id = $1)sql"};
const Statement kPreempt{"preempt_instance", R"sql(
UPDATE instances SET state = 'preempting', preempt_at = $2::timestamptz, preempt_reason = $3, version = version + 1
WHERE id = $1 AND state IN ('provisioning', 'running')
RETURNING host_id, region, gpu_model)sql"};
const Statement kEndInstance{"end_instance", R"sql(
UPDATE instances SET state = $2, end_reason = COALESCE(end_reason, $3), ended_at = greatest($4::timestamptz, created_at),
       version = version + 1
WHERE id = $1 AND instance_is_live(state)
RETURNING host_id)sql"};
const Statement kFreeGpus{"free_instance_gpus", "DELETE FROM gpu_allocations WHERE instance_id = $1"};
const Statement kUpsertReservation{"upsert_reservation", R"sql(
INSERT INTO pool_reservations (region, gpu_model, internal_reserved_gpus) VALUES ($1, $2, $3)
ON CONFLICT (region, gpu_model) DO UPDATE SET internal_reserved_gpus = EXCLUDED.internal_reserved_gpus,
                                              updated_at = now())sql"};
const Statement kHeartbeatHost{"heartbeat_host", R"sql(
UPDATE hosts SET last_heartbeat = $3::timestamptz, health = 'up', down_since = NULL, down_reason = NULL,
       agent_version = NULLIF($2, '')
WHERE id = $1 RETURNING assignment_version, health)sql"};
const Statement kHostVersionOf{"host_version_of", "SELECT assignment_version FROM hosts WHERE id = $1"};
const Statement kLockHost{"lock_host", "SELECT 1 FROM hosts WHERE id = $1 FOR NO KEY UPDATE"};
const Statement kInstanceHostOf{"instance_host_of", "SELECT host_id FROM instances WHERE id = $1"};
const Statement kLockInstanceRow{"lock_instance_row",
                                 "SELECT state, host_id, tenant_id FROM instances WHERE id = $1 FOR UPDATE"};
const Statement kLockHostInstance{"lock_host_instance",
                                  "SELECT state FROM instances WHERE id = $1 AND host_id = $2 FOR UPDATE"};
const Statement kReported{"instance_reported", R"sql(
UPDATE instances SET last_reported_at = $3::timestamptz,
       state = CASE WHEN $2 AND state = 'provisioning' THEN 'running' ELSE state END,
       started_at = CASE WHEN $2 AND state = 'provisioning' THEN $3::timestamptz ELSE started_at END,
       version = version + CASE WHEN $2 AND state = 'provisioning' THEN 1 ELSE 0 END
WHERE id = $1)sql"};
const Statement kAllPools{"all_pools", "SELECT DISTINCT region, gpu_model FROM hosts ORDER BY region, gpu_model"};
const Statement kHostHealth{"host_health", R"sql(
SELECT id, region, health, state, (extract(epoch FROM last_heartbeat) * 1000)::bigint AS heartbeat_ms,
       (extract(epoch FROM down_since) * 1000)::bigint AS down_since_ms, down_reason = 'mass_silence' AS braked
FROM hosts ORDER BY id)sql"};
const Statement kMarkDown{"mark_host_down", R"sql(
UPDATE hosts SET health = 'down', down_since = $2::timestamptz, down_reason = $3
WHERE id = $1 AND health = 'up' AND last_heartbeat = to_timestamp($4::bigint / 1000.0) RETURNING id)sql"};
const Statement kOnHost{"instances_on_host", "SELECT id FROM instances WHERE host_id = $1 AND " SPW_ON_HOST("state")};
const Statement kDuePreemptions{"due_preemptions",
                                "SELECT id FROM instances WHERE state = 'preempting' AND preempt_at <= $1::timestamptz "
                                "ORDER BY preempt_at"};
const Statement kPendingInstances{"pending_instances",
                                  "SELECT id, region, gpu_model, gpus, market, host_id FROM instances "
                                  "WHERE state = 'pending' ORDER BY created_at, id"};
const Statement kPendingOne{"pending_one", R"sql(
SELECT region, gpu_model, gpus, market, host_id, min_cuda,
       (SELECT count(*) FROM instance_ports p WHERE p.instance_id = instances.id) AS ports
FROM instances WHERE id = $1)sql"};
const Statement kLockInstanceState{"lock_instance_state", "SELECT state FROM instances WHERE id = $1 FOR UPDATE"};
// Instances on a host that is down were dealt with when it went down (failed, or kept by the
// brake until it answers again); only one that is being terminated is ended there.
const Statement kUnreported{"unreported_instances", R"sql(
SELECT i.id FROM instances i JOIN hosts h ON h.id = i.host_id
WHERE )sql" SPW_ON_HOST("i.state") R"sql(
  AND i.last_reported_at < $1::timestamptz AND (h.health = 'up' OR i.state = 'terminating'))sql"};
const Statement kGaugeInstances{"gauge_instances", "SELECT state, market, count(*) AS n FROM instances GROUP BY state, market"};
const Statement kGaugeHosts{"gauge_hosts", "SELECT health, state, count(*) AS n FROM hosts GROUP BY health, state"};
const Statement kGaugeHeartbeat{"gauge_heartbeat",
                                "SELECT COALESCE(EXTRACT(epoch FROM $1::timestamptz - min(last_heartbeat)), 0)::bigint AS age_s "
                                "FROM hosts WHERE health = 'up'"};

InstanceState StateOf(const pqxx::field& f) {
  return ParseInstanceState(f.as<std::string>()).value_or(InstanceState::kFailed);
}


ApiError NoCapacity(const std::string& why) { return ApiError(409, "insufficient_capacity", why); }

}  // namespace

bool PoolState::Offers(std::int64_t gpus) const {
  for (const auto& h : hosts)
    if (h.gpu_count >= gpus) return true;
  return false;
}

std::int64_t PoolState::Spare() const {
  return std::max<std::int64_t>(0, Offerable() - reserved - on_demand - spot_active - spot_leaving);
}

std::vector<std::pair<std::string, std::string>> AllPools(pqxx::transaction_base& tx) {
  std::vector<std::pair<std::string, std::string>> pools;
  for (const auto& r : tx.exec_prepared(kAllPools.name))
    pools.emplace_back(r["region"].as<std::string>(), r["gpu_model"].as<std::string>());
  return pools;
}

PoolState LoadPool(pqxx::transaction_base& tx, const std::string& region, const std::string& gpu_model, bool lock) {
  PoolState p;
  p.region = region;
  p.gpu_model = gpu_model;
  std::map<std::string, size_t> index;
  for (const auto& r : tx.exec_prepared(lock ? kPoolHostsLocked.name : kPoolHosts.name, region, gpu_model)) {
    HostSlot h;
    h.id = r["id"].as<std::string>();
    h.gpu_count = r["gpu_count"].as<std::int64_t>();
    h.cuda_version = r["cuda_version"].as<std::string>();
    h.free_ports = r["free_ports"].as<std::int64_t>();
    const std::string state = r["state"].as<std::string>(), health = r["health"].as<std::string>();
    h.placeable = state == "active" && health == "up";
    h.draining = state == "draining" && health == "up";
    if (health == "up" && state != "disabled") p.total += h.gpu_count;
    index[h.id] = p.hosts.size();
    p.hosts.push_back(std::move(h));
  }
  // Under READ COMMITTED each statement has its own snapshot: a host registered since the first
  // one is not in `index`, and its GPUs are left for the next look at the pool.
  for (const auto& r : tx.exec_prepared(kPoolFreeGpus.name, region, gpu_model))
    if (auto it = index.find(r["host_id"].as<std::string>()); it != index.end())
      p.hosts[it->second].free.push_back(r["gpu_index"].as<int>());
  // A draining host takes nothing new: its free GPUs are never offered (spare, availability).
  for (const auto& h : p.hosts)
    if (h.draining) p.draining_idle += static_cast<std::int64_t>(h.free.size());
  for (const auto& r : tx.exec_prepared(kPoolLiveInstances.name, region, gpu_model)) {
    const auto market = ParseMarket(r["market"].as<std::string>());
    const InstanceState state = StateOf(r["state"]);
    const std::int64_t gpus = r["gpus"].as<std::int64_t>();
    const auto host = TextFrom(r["host_id"]);
    if (market == Market::kOnDemand) {
      p.on_demand += gpus;
    } else if (state == InstanceState::kPreempting) {
      p.spot_leaving += gpus;
      if (host) {
        if (auto it = index.find(*host); it != index.end()) p.hosts[it->second].leaving += gpus;
      }
    } else {
      p.spot_active += gpus;
      SpotHolder s{r["id"].as<std::string>(), host.value_or(""), gpus, IntFrom(r["max_price_micros"])};
      p.spot.push_back(std::move(s));
    }
    if (state == InstanceState::kPending && host) {
      if (auto it = index.find(*host); it != index.end()) p.hosts[it->second].claimed += gpus;
    }
  }
  const auto res = tx.exec_prepared(kPoolReserved.name, region, gpu_model);
  if (!res.empty()) p.reserved = res[0]["internal_reserved_gpus"].as<std::int64_t>();
  return p;
}

bool HostMeets(const HostSlot& h, const PlacementNeeds& needs) {
  if (needs.min_cuda && !CudaAtLeast(h.cuda_version, *needs.min_cuda)) return false;
  return h.free_ports >= needs.ports;
}

namespace {
// "no host in us-east has 8 free H100-80GB GPUs with CUDA ≥ 12.8; 3 have with CUDA 12.4": what the
// hosts that have the GPUs free offer instead, so the caller can change the launch.
std::string NoHostFor(const PoolState& pool, const PlacementNeeds& needs) {
  std::string with;
  if (needs.min_cuda) with = " with CUDA ≥ " + *needs.min_cuda;
  if (needs.ports > 0) with += (with.empty() ? " with " : " and ") + std::to_string(needs.ports) + " ports to map";
  std::string msg = "no host in " + pool.region + " has " + std::to_string(needs.gpus) + " free " + pool.gpu_model +
                    " GPUs" + with;
  if (with.empty()) return msg;
  std::map<std::string, int> by_cuda;
  int short_of_ports = 0;
  for (const auto& h : pool.hosts) {
    if (!h.placeable || h.FreeEffective() < needs.gpus || HostMeets(h, needs)) continue;
    if (needs.min_cuda && !CudaAtLeast(h.cuda_version, *needs.min_cuda))
      ++by_cuda[h.cuda_version.empty() ? "unknown" : h.cuda_version];
    else
      ++short_of_ports;
  }
  std::string instead;
  for (auto it = by_cuda.rbegin(); it != by_cuda.rend(); ++it)
    instead += (instead.empty() ? std::to_string(it->second) + (it->second == 1 ? " has" : " have") + " with CUDA "
                                : ", " + std::to_string(it->second) + " with CUDA ") +
               it->first;
  if (short_of_ports)
    instead += (instead.empty() ? "" : "; ") + std::to_string(short_of_ports) +
               (short_of_ports == 1 ? " has" : " have") + " them free but too few ports to map";
  return msg + "; " + (instead.empty() ? "none has the GPUs free" : instead);
}
}  // namespace

PlacementPlan PlanPlacement(const PoolState& pool, std::int64_t gpus, Market market) {
  return PlanPlacement(pool, PlacementNeeds{gpus, market});
}

PlacementPlan PlanPlacement(const PoolState& pool, const PlacementNeeds& needs) {
  const std::int64_t gpus = needs.gpus;
  const Market market = needs.market;
  const bool constrained = needs.min_cuda || needs.ports > 0;
  auto usable = [&](const HostSlot& h) { return h.placeable && HostMeets(h, needs); };
  PlacementPlan plan;
  // Best fit: the placeable host with the fewest free GPUs that still fit.
  const HostSlot* best = nullptr;
  for (const auto& h : pool.hosts)
    if (usable(h) && h.FreeEffective() >= gpus && (!best || h.FreeEffective() < best->FreeEffective())) best = &h;

  if (market == Market::kSpot) {
    if (pool.Spare() < gpus)
      throw NoCapacity("no spare " + pool.gpu_model + " capacity in " + pool.region + " for " + std::to_string(gpus) +
                       " spot GPUs (" + std::to_string(pool.Spare()) + " spare)");
    if (!best)
      throw NoCapacity(constrained ? NoHostFor(pool, needs)
                                   : "no single host in " + pool.region + " has " + std::to_string(gpus) + " free GPUs");
    plan.state = InstanceState::kProvisioning;
    plan.host_id = best->id;
    plan.gpu_indices.assign(best->free.begin(), best->free.begin() + gpus);
    return plan;
  }

  const std::int64_t limit = pool.Offerable() - pool.reserved;
  if (pool.on_demand + gpus > limit)
    throw NoCapacity("the " + pool.gpu_model + " pool in " + pool.region + " has " +
                     std::to_string(std::max<std::int64_t>(0, limit - pool.on_demand)) +
                     " GPUs left for on-demand; " + std::to_string(gpus) + " asked");
  std::set<std::string> chosen;
  if (best) {
    plan.state = InstanceState::kProvisioning;
    plan.host_id = best->id;
    plan.gpu_indices.assign(best->free.begin(), best->free.begin() + gpus);
  } else {
    // Make room on one host by preempting its spot instances (cheapest bid first, then newest),
    // choosing the host that needs the fewest GPUs preempted; GPUs already under notice count as
    // coming free.
    std::int64_t best_cost = -1;
    for (const auto& h : pool.hosts) {
      if (!usable(h) || h.gpu_count < gpus) continue;
      std::int64_t have = h.FreeEffective() + h.leaving, cost = 0;
      std::vector<SpotHolder> victims;
      for (const auto& s : pool.spot) {
        if (have >= gpus) break;
        if (s.host_id != h.id) continue;
        victims.push_back(s);
        have += s.gpus;
        cost += s.gpus;
      }
      if (have >= gpus && (best_cost < 0 || cost < best_cost)) {
        best_cost = cost;
        plan.host_id = h.id;
        plan.victims = std::move(victims);
      }
    }
    if (best_cost < 0 && constrained) throw NoCapacity(NoHostFor(pool, needs));
    if (best_cost < 0)
      throw NoCapacity("no host in " + pool.region + " can hold " + std::to_string(gpus) + " " + pool.gpu_model +
                       " GPUs, even by preempting spot instances");
    plan.state = InstanceState::kPending;
    for (const auto& v : plan.victims) chosen.insert(v.id);
  }
  // The pool as a whole must keep its internal reservation: preempt more spot if needed.
  std::int64_t excess = pool.on_demand + gpus + pool.spot_active - limit;
  for (const auto& v : plan.victims) excess -= v.gpus;
  for (const auto& s : pool.spot) {
    if (excess <= 0) break;
    if (chosen.count(s.id)) continue;
    plan.victims.push_back(s);
    chosen.insert(s.id);
    excess -= s.gpus;
  }
  return plan;
}

void ApplyPlacement(pqxx::transaction_base& tx, const FleetContext& fc, const std::string& instance_id,
                    const PlacementPlan& plan) {
  for (int idx : plan.gpu_indices) tx.exec_prepared(kAllocate.name, plan.host_id, idx, instance_id);
  // Placed counts as reported: the grace before an unreported instance is failed runs from here, on
  // the clock the grace is judged by.
  tx.exec_prepared(kSetPlaced.name, instance_id, ToString(*plan.state), plan.host_id, IntArrayLiteral(plan.gpu_indices),
                   FormatTime(fc.clock.Now()));
  for (const auto& v : plan.victims) PreemptSpot(tx, fc, v.id, "capacity");
  if (plan.state == InstanceState::kProvisioning) {
    AllocatePorts(tx, instance_id, plan.host_id);
    BumpHost(tx, plan.host_id);
  }
}

void BumpHost(pqxx::transaction_base& tx, const std::string& host_id) { tx.exec_prepared(kBumpHost.name, host_id); }

bool LockHost(pqxx::transaction_base& tx, const std::string& host_id) {
  return !tx.exec_prepared(kLockHost.name, host_id).empty();
}

std::optional<LockedInstance> LockInstance(pqxx::transaction_base& tx, const std::string& id) {
  for (;;) {
    const auto h = tx.exec_prepared(kInstanceHostOf.name, id);
    if (h.empty()) return std::nullopt;
    const auto host = TextFrom(h[0]["host_id"]);
    if (host) LockHost(tx, *host);
    const auto row = tx.exec_prepared(kLockInstanceRow.name, id);
    if (row.empty()) return std::nullopt;
    if (TextFrom(row[0]["host_id"]) != host) continue;  // moved meanwhile: lock its new host
    return LockedInstance{row[0]["tenant_id"].as<std::string>(), host, StateOf(row[0]["state"])};
  }
}

void PreemptSpot(pqxx::transaction_base& tx, const FleetContext& fc, const std::string& instance_id,
                 const std::string& reason) {
  const TimeMs preempt_at = fc.clock.Now() + fc.settings.preemption_notice;
  const auto r = tx.exec_prepared(kPreempt.name, instance_id, FormatTime(preempt_at), reason);
  if (r.empty()) return;  // already leaving or gone
  if (const auto host = TextFrom(r[0]["host_id"])) BumpHost(tx, *host);
  if (fc.metrics) fc.metrics->Preempted(r[0]["region"].as<std::string>(), r[0]["gpu_model"].as<std::string>(), reason);
  log::Info("spot instance preempted", {{"instance_id", instance_id}, {"reason", reason}});
}

void EndInstance(pqxx::transaction_base& tx, const std::string& instance_id, InstanceState state,
                 const std::string& end_reason, TimeMs now) {
  const auto r = tx.exec_prepared(kEndInstance.name, instance_id, ToString(state), end_reason, FormatTime(now));
  tx.exec_prepared(kFreeGpus.name, instance_id);
  ReleaseInstanceResources(tx, instance_id);
  if (r.empty()) return;  // it had ended already
  if (const auto host = TextFrom(r[0]["host_id"])) BumpHost(tx, *host);
}

void SetReservation(pqxx::transaction_base& tx, const FleetContext& fc, const std::string& region,
                    const std::string& gpu_model, std::int64_t reserved) {
  PoolState pool = LoadPool(tx, region, gpu_model, /*lock=*/true);
  if (pool.hosts.empty()) throw ApiError(404, "not_found", "no pool " + region + "/" + gpu_model);
  if (reserved > pool.total - pool.on_demand)
    throw ApiError(409, "reservation_too_large",
                   "at most " + std::to_string(pool.total - pool.on_demand) + " GPUs can be reserved: the pool has " +
                       std::to_string(pool.total) + " and on-demand instances hold " + std::to_string(pool.on_demand));
  tx.exec_prepared(kUpsertReservation.name, region, gpu_model, reserved);
  std::int64_t excess = pool.on_demand + pool.spot_active - (pool.total - reserved);
  for (const auto& s : pool.spot) {  // cheapest bid first, then newest
    if (excess <= 0) break;
    PreemptSpot(tx, fc, s.id, "reservation");
    excess -= s.gpus;
  }
}

std::int64_t RecordHeartbeat(pqxx::transaction_base& tx, const std::string& host_id, const std::string& agent_version,
                             const std::vector<ReportedInstance>& reported, TimeMs now) {
  // The host row first (the lock order), then its instances in id order.
  const auto h = tx.exec_prepared(kHeartbeatHost.name, host_id, agent_version, FormatTime(now));
  if (h.empty()) throw ApiError(401, "unauthenticated", "unknown host");
  std::vector<const ReportedInstance*> ordered;
  for (const auto& r : reported) ordered.push_back(&r);
  std::sort(ordered.begin(), ordered.end(), [](auto* a, auto* b) { return a->id < b->id; });
  for (const ReportedInstance* rp : ordered) {
    const ReportedInstance& r = *rp;
    const auto row = tx.exec_prepared(kLockHostInstance.name, r.id, host_id);
    if (row.empty()) continue;  // not this host's: the agent will see it absent from its assignments
    const InstanceState state = StateOf(row[0]["state"]);
    if (!IsOnHost(state)) continue;
    if (r.state == "starting" || r.state == "running") {
      tx.exec_prepared(kReported.name, r.id, r.state == "running", FormatTime(now));
    } else if (r.state == "stopped") {
      if (state == InstanceState::kTerminating) EndInstance(tx, r.id, InstanceState::kTerminated, "terminated", now);
      else if (state == InstanceState::kPreempting) EndInstance(tx, r.id, InstanceState::kTerminated, "preempted", now);
      else EndInstance(tx, r.id, InstanceState::kFailed, "stopped_on_host", now);
    } else if (r.state == "failed") {
      EndInstance(tx, r.id, InstanceState::kFailed, "failed_on_host", now);
    }
  }
  // Re-read: ending an instance above bumps the version the agent should wait on.
  return tx.exec_prepared(kHostVersionOf.name, host_id)[0]["assignment_version"].as<std::int64_t>();
}

namespace {

const Statement kMarkToReprice{"pool_mark_to_reprice",
                               "INSERT INTO pools_to_reprice (region, gpu_model, marked_at) VALUES ($1, $2, now()) "
                               "ON CONFLICT (region, gpu_model) DO NOTHING"};
const Statement kMarkedToReprice{"pools_marked_to_reprice",
                                 "SELECT region, gpu_model FROM pools_to_reprice ORDER BY marked_at, region, gpu_model"};
const Statement kTakeRepriceMark{"pool_take_reprice_mark",
                                 "DELETE FROM pools_to_reprice WHERE region = $1 AND gpu_model = $2"};

// One pool's pass, in `tx` (its hosts locked by LoadPool): returns 1 when it wrote a new price.
int RepricePool(pqxx::transaction_base& tx, const FleetContext& fc, const std::string& reg, const std::string& model) {
  const SpotPolicy& policy = fc.settings.spot;
  const PoolState pool = LoadPool(tx, reg, model, /*lock=*/true);
  const auto od = OnDemandPriceAt(tx, model, fc.clock.Now());
  if (!od || pool.total == 0) return 0;  // nothing to sell, or no list price to discount
  const auto previous = CurrentSpotPrice(tx, reg, model);
  const std::int64_t spare_ppm = SpareFractionPpm(pool.Spare(), pool.total);
  const std::int64_t target = SpotTarget(*od, spare_ppm, policy.curve);
  const std::int64_t next = NextSpotPrice(previous, target, *od, policy);
  int n = 0;
  if (!previous || *previous != next) {
    RecordSpotPrice(tx, {reg, model, next, *od, spare_ppm, target});
    n = 1;
  }
  for (const auto& s : pool.spot)
    if (s.max_price_micros && *s.max_price_micros < next) PreemptSpot(tx, fc, s.id, "price");
  return n;
}

}  // namespace

int Reprice(pqxx::connection_base& conn, const FleetContext& fc, const std::string& region, const std::string& gpu_model) {
  std::vector<std::pair<std::string, std::string>> pools;
  if (region.empty()) {
    pqxx::nontransaction read(conn);
    pools = AllPools(read);
  } else {
    pools.emplace_back(region, gpu_model);
  }
  int written = 0;
  for (const auto& [reg, model] : pools)
    written += InTransaction(conn, [&](pqxx::work& tx) { return RepricePool(tx, fc, reg, model); });
  return written;
}

void MarkPoolToReprice(pqxx::transaction_base& tx, const std::string& region, const std::string& gpu_model) {
  tx.exec_prepared(kMarkToReprice.name, region, gpu_model);
}

int RepriceMarkedPools(pqxx::connection_base& conn, const FleetContext& fc) {
  std::vector<std::pair<std::string, std::string>> pools;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kMarkedToReprice.name))
      pools.emplace_back(r["region"].as<std::string>(), r["gpu_model"].as<std::string>());
  }
  int written = 0;
  for (const auto& [reg, model] : pools)
    written += InTransaction(conn, [&](pqxx::work& tx) {
      tx.exec_prepared(kTakeRepriceMark.name, reg, model);  // with the pass: a failed one keeps its mark
      return RepricePool(tx, fc, reg, model);
    });
  return written;
}

FleetSettings FleetSettings::From(const Config& c) {
  FleetSettings s;
  s.silence = {c.Duration("fleet.heartbeat_timeout"), c.Int("fleet.silence_brake_percent"),
               c.Int("fleet.silence_brake_min_hosts")};
  s.instance_report_grace = c.Duration("fleet.instance_report_grace");
  s.assignment_wait_max = c.Duration("fleet.assignment_wait_max");
  s.heartbeat_flush_interval = c.Duration("fleet.heartbeat_flush_interval");
  s.heartbeat_interval = c.Duration("agent.heartbeat_interval");
  s.sample_interval = c.Duration("agent.sample_interval");
  s.tick = c.Duration("controllers.tick");
  s.reprice_interval = c.Duration("spot.reprice_interval");
  s.preemption_notice = c.Duration("spot.preemption_notice");
  s.suspension_grace = c.Duration("tenants.suspension_grace");
  std::string why;
  auto curve = SpotCurve::Parse(c.String("spot.discount_curve"), &why);
  if (!curve) throw ConfigError("spot.discount_curve = \"" + c.String("spot.discount_curve") + "\": " + why);
  const auto floor = ParseMicros(c.String("spot.floor"));  // checked by the schema (CheckMoney)
  s.spot = SpotPolicy{*curve, c.Int("spot.smoothing_percent"), floor.value_or(0)};
  return s;
}

SilenceVerdict JudgeSilence(const std::vector<HostHealth>& hosts, TimeMs now, TimeMs heard_since,
                            const SilenceRules& rules) {
  struct Region {
    std::int64_t counted = 0, quiet = 0;
    std::vector<std::string> silent;
  };
  std::map<std::string, Region> regions;
  for (const auto& h : hosts) {
    if (h.disabled) continue;
    // Time before heard_since is not held against anyone: the control plane was not listening.
    const TimeMs heard = std::max(h.last_heartbeat, heard_since);
    const Millis silent_for = std::chrono::duration_cast<Millis>(now - heard);
    Region& r = regions[h.region];
    if (h.up) {
      ++r.counted;
      if (silent_for * 2 > rules.timeout) ++r.quiet;
      if (silent_for > rules.timeout) r.silent.push_back(h.id);
    } else if (h.down_since && now - *h.down_since <= rules.timeout) {
      ++r.counted;  // went down just now: part of what is happening to the region
      ++r.quiet;
    }
  }
  SilenceVerdict v;
  for (auto& [name, r] : regions) {
    if (r.silent.empty()) continue;
    const bool brake = r.counted >= rules.brake_min_hosts && r.quiet * 100 > rules.brake_percent * r.counted;
    if (brake) v.braking_regions.push_back(name);
    auto& into = brake ? v.brake : v.fail;
    into.insert(into.end(), r.silent.begin(), r.silent.end());
  }
  return v;
}

int FailSilentHosts(pqxx::connection& conn, const FleetContext& fc, TimeMs heard_since) {
  const TimeMs now = fc.clock.Now();
  std::vector<HostHealth> hosts;
  std::map<std::string, std::int64_t> seen_heartbeat;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kHostHealth.name)) {
      HostHealth h;
      h.id = r["id"].as<std::string>();
      h.region = r["region"].as<std::string>();
      h.up = r["health"].as<std::string>() == "up";
      h.disabled = r["state"].as<std::string>() == "disabled";
      const auto heartbeat_ms = r["heartbeat_ms"].as<std::int64_t>();
      h.last_heartbeat = FromEpochMs(heartbeat_ms);
      if (const auto down_ms = IntFrom(r["down_since_ms"])) h.down_since = FromEpochMs(*down_ms);
      h.braked = !r["braked"].is_null() && r["braked"].as<bool>();
      seen_heartbeat[h.id] = heartbeat_ms;
      hosts.push_back(std::move(h));
    }
  }
  const SilenceVerdict verdict = JudgeSilence(hosts, now, heard_since, fc.settings.silence);
  for (const auto& region : verdict.braking_regions)
    log::Error("many hosts of a region fell silent together: marking them down WITHOUT failing their instances "
               "(the silence brake); check the network and the agents",
               {{"region", region}});
  if (fc.metrics) {
    // Per region, hosts held down by the brake with their instances kept: an SRE must look at them.
    const std::set<std::string> braking_now(verdict.brake.begin(), verdict.brake.end());
    std::map<std::string, std::int64_t> braked;
    for (const auto& h : hosts) braked[h.region] += (h.braked || braking_now.count(h.id)) ? 1 : 0;
    for (const auto& [region, n] : braked) fc.metrics->SilenceBrake(region, n);
  }
  int failed = 0;
  // One transaction per host, the host locked first; a heartbeat that arrived since the read
  // (last_heartbeat changed) saves the host.
  auto mark = [&](const std::string& host, const char* reason, bool fail_instances) {
    InTransaction(conn, [&](pqxx::work& tx) {
      if (tx.exec_prepared(kMarkDown.name, host, FormatTime(now), reason, seen_heartbeat[host]).empty()) return;
      if (fc.metrics) fc.metrics->HostDown(reason);
      if (!fail_instances) {
        log::Warn("host fell silent with much of its region: marked down, instances kept", {{"host_id", host}});
        return;
      }
      log::Warn("host missed its heartbeats: marked down, its instances failed", {{"host_id", host}});
      for (const auto& i : tx.exec_prepared(kOnHost.name, host)) {
        EndInstance(tx, i["id"].as<std::string>(), InstanceState::kFailed, "host_down", now);
        ++failed;
      }
    });
  };
  for (const auto& host : verdict.fail) mark(host, "silent", true);
  for (const auto& host : verdict.brake) mark(host, "mass_silence", false);
  return failed;
}

namespace {
// Runs fn(tx, state) with the instance's host locked and then the instance (the lock order) in a
// transaction of its own; nothing when the instance is gone.
template <class Fn>
void WithInstanceLocked(pqxx::connection& conn, const std::string& id, Fn&& fn) {
  InTransaction(conn, [&](pqxx::work& tx) {
    if (const auto locked = LockInstance(tx, id)) fn(tx, locked->state);
  });
}
}  // namespace

int FinishPreemptions(pqxx::connection& conn, const FleetContext& fc) {
  const TimeMs now = fc.clock.Now();
  std::vector<std::string> due;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kDuePreemptions.name, FormatTime(now))) due.push_back(r["id"].as<std::string>());
  }
  int n = 0;
  for (const auto& id : due)
    WithInstanceLocked(conn, id, [&](pqxx::transaction_base& tx, InstanceState state) {
      if (state != InstanceState::kPreempting) return;
      EndInstance(tx, id, InstanceState::kTerminated, "preempted", now);
      ++n;
    });
  return n;
}

int PlacePending(pqxx::connection& conn, const FleetContext& fc) {
  std::vector<std::string> ids;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kPendingInstances.name)) ids.push_back(r["id"].as<std::string>());
  }
  int placed = 0;
  for (const auto& id : ids) {
    placed += InTransaction(conn, [&](pqxx::work& tx) -> int {
    const auto row = tx.exec_prepared(kPendingOne.name, id)[0];
    const std::string region = row["region"].as<std::string>(), model = row["gpu_model"].as<std::string>();
    const std::int64_t gpus = row["gpus"].as<std::int64_t>();
    PlacementNeeds needs{gpus, ParseMarket(row["market"].as<std::string>()).value_or(Market::kOnDemand),
                         TextFrom(row["min_cuda"]), row["ports"].as<std::int64_t>()};
    PoolState pool = LoadPool(tx, region, model, /*lock=*/true);
    if (StateOf(tx.exec_prepared(kLockInstanceState.name, id)[0]["state"]) != InstanceState::kPending) return 0;
    PlacementPlan plan;
    const std::string host = TextFrom(row["host_id"]).value_or("");
    for (auto& h : pool.hosts) {
      if (h.id != host) continue;
      h.claimed -= gpus;  // its own claim
      if (h.placeable && static_cast<std::int64_t>(h.free.size()) >= gpus && h.free_ports >= needs.ports) {
        plan.state = InstanceState::kProvisioning;
        plan.host_id = h.id;
        plan.gpu_indices.assign(h.free.begin(), h.free.begin() + gpus);
      } else if (!h.placeable) {
        // Its host went away while it waited: plan again, anywhere in the pool.
        pool.on_demand -= gpus;
        try {
          plan = PlanPlacement(pool, needs);
        } catch (const ApiError&) {
          plan = PlacementPlan{};
        }
      }
    }
    if (!plan.state) return 0;
    ApplyPlacement(tx, fc, id, plan);
    return plan.state == InstanceState::kProvisioning ? 1 : 0;
    });
  }
  return placed;
}

int FailUnreportedInstances(pqxx::connection& conn, const FleetContext& fc, TimeMs heard_since) {
  const TimeMs now = fc.clock.Now();
  const Millis grace = fc.settings.instance_report_grace;
  if (now - heard_since <= grace) return 0;  // not listening long enough to judge anyone
  std::vector<std::string> ids;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kUnreported.name, FormatTime(now - grace))) ids.push_back(r["id"].as<std::string>());
  }
  int n = 0;
  for (const auto& id : ids)
    WithInstanceLocked(conn, id, [&](pqxx::transaction_base& tx, InstanceState state) {
      if (state == InstanceState::kTerminating)
        EndInstance(tx, id, InstanceState::kTerminated, "terminated", now);
      else if (state == InstanceState::kProvisioning || state == InstanceState::kRunning ||
               state == InstanceState::kPreempting)
        EndInstance(tx, id, InstanceState::kFailed, "lost", now);
      else
        return;
      ++n;
    });
  return n;
}

int EndSuspendedTenantsInstances(pqxx::connection_base& conn, const FleetContext& fc) {
  const TimeMs now = fc.clock.Now(), cutoff = now - fc.settings.suspension_grace;
  std::vector<std::string> tenants;
  {
    pqxx::nontransaction read(conn);
    tenants = SuspendedWithLiveInstances(read, cutoff);
  }
  int total = 0;
  for (const auto& tenant : tenants) {
    std::vector<std::string> ids;
    {
      pqxx::nontransaction read(conn);
      ids = InstancesToStop(read, tenant);
    }
    int n = 0;
    for (const auto& id : ids)
      n += InTransaction(conn, [&](pqxx::work& tx) {
        // The tenant row first (the lock order), and still suspended: a resumption may have won.
        const auto t = LockTenant(tx, tenant);
        if (!t || t->status != TenantStatus::kSuspended || !t->suspended_at || *t->suspended_at > cutoff) return 0;
        const auto out = TerminateInstance(tx, id, tenant, "tenant_suspended", now);
        if (!out || !out->changed) return 0;
        RecordAudit(tx, SystemAudit(tenant, "instance.terminate", id));
        return 1;
      });
    if (n > 0) log::Info("suspended tenant's instances terminated", {{"tenant_id", tenant}, {"instances", n}});
    total += n;
  }
  return total;
}

void RefreshFleetGauges(pqxx::connection& conn, const FleetContext& fc) {
  if (!fc.metrics) return;
  pqxx::work tx(conn);
  for (const auto& [region, model] : AllPools(tx)) {
    const PoolState p = LoadPool(tx, region, model, false);
    auto set = [&](const char* use, std::int64_t v) {
      fc.metrics->gpus->Add({{"region", region}, {"gpu_model", model}, {"use", use}}).Set(static_cast<double>(v));
    };
    const std::int64_t spot = p.spot_active + p.spot_leaving;
    set("on_demand", p.on_demand);
    set("spot", spot);
    set("internal", p.reserved);
    set("free", p.Spare());
    if (const auto price = CurrentSpotPrice(tx, region, model))
      fc.metrics->spot_price->Add({{"region", region}, {"gpu_model", model}})
          .Set(static_cast<double>(*price) / static_cast<double>(kPpm));
  }
  for (InstanceState state : kAllInstanceStates)
    for (Market market : {Market::kOnDemand, Market::kSpot})
      fc.metrics->instances->Add({{"state", ToString(state)}, {"market", ToString(market)}}).Set(0);
  for (const auto& r : tx.exec_prepared(kGaugeInstances.name))
    fc.metrics->instances->Add({{"state", r["state"].as<std::string>()}, {"market", r["market"].as<std::string>()}})
        .Set(r["n"].as<double>());
  // Heartbeats are stamped by the clock, so their age is measured by it too.
  fc.metrics->heartbeat_age->Set(
      tx.exec_prepared(kGaugeHeartbeat.name, FormatTime(fc.clock.Now()))[0]["age_s"].as<double>());
  for (const char* health : {"up", "down"})
    for (const char* state : {"active", "draining", "disabled"})
      fc.metrics->hosts->Add({{"health", health}, {"state", state}}).Set(0);
  for (const auto& r : tx.exec_prepared(kGaugeHosts.name))
    fc.metrics->hosts->Add({{"health", r["health"].as<std::string>()}, {"state", r["state"].as<std::string>()}})
        .Set(r["n"].as<double>());
  tx.commit();
}

}  // namespace spillway
