// Placement: which host and GPUs a launch gets (preempting spot instances when on-demand needs
// them), applying a plan, and placing what is pending.
#include "provisioning/fleet.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/sql.hpp"
#include "provisioning/instances.hpp"
#include "provisioning/launch_spec.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

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

// What the pool's counts alone refuse: spot beyond the spare capacity, on-demand beyond what the
// reservation leaves.
void CheckPoolRoom(const PoolState& pool, const PlacementNeeds& needs) {
  const std::int64_t gpus = needs.gpus;
  if (needs.market == Market::kSpot) {
    if (pool.Spare() < gpus)
      throw NoCapacity("no spare " + pool.gpu_model + " capacity in " + pool.region + " for " + std::to_string(gpus) +
                       " spot GPUs (" + std::to_string(pool.Spare()) + " spare)");
    return;
  }
  const std::int64_t limit = pool.Offerable() - pool.reserved;
  if (pool.on_demand + gpus > limit)
    throw NoCapacity("the " + pool.gpu_model + " pool in " + pool.region + " has " +
                     std::to_string(std::max<std::int64_t>(0, limit - pool.on_demand)) +
                     " GPUs left for on-demand; " + std::to_string(gpus) + " asked");
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

  CheckPoolRoom(pool, needs);
  if (market == Market::kSpot) {
    if (!best)
      throw NoCapacity(constrained ? NoHostFor(pool, needs)
                                   : "no single host in " + pool.region + " has " + std::to_string(gpus) + " free GPUs");
    plan.state = InstanceState::kProvisioning;
    plan.host_id = best->id;
    plan.gpu_indices.assign(best->free.begin(), best->free.begin() + gpus);
    return plan;
  }

  const std::int64_t limit = pool.Offerable() - pool.reserved;
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

// A locked host row (kLockHostState, kLockHostSlot) that takes new instances.
bool Placeable(const pqxx::row& host) {
  return fleet_sql::Placeable(host["state"].as<std::string>(), host["health"].as<std::string>());
}

// A host's free GPU indices, lowest first. Under the pool's lock nothing else allocates them.
std::vector<int> FreeGpuIndices(pqxx::transaction_base& tx, const std::string& host_id) {
  std::vector<int> free;
  for (const auto& r : tx.exec_prepared(kHostFreeGpus.name, host_id)) free.push_back(r["gpu_index"].as<int>());
  return free;
}

std::optional<PlacementPlan> PlaceOnFreeGpus(pqxx::transaction_base& tx, const PoolState& counts,
                                             const PlacementNeeds& needs) {
  CheckPoolRoom(counts, needs);
  // On-demand that would eat into the reservation with spot running must preempt: the whole pool.
  if (needs.market == Market::kOnDemand &&
      counts.on_demand + needs.gpus + counts.spot_active > counts.Offerable() - counts.reserved)
    return std::nullopt;
  const auto best = tx.exec_params(kBestFitHost.sql, counts.region, counts.gpu_model, needs.gpus, needs.ports,
                                     Nullable(needs.min_cuda));
  if (best.empty()) return std::nullopt;
  PlacementPlan plan;
  plan.host_id = best[0]["id"].as<std::string>();
  // Under the pool's lock nothing else allocates here; only the host itself may have gone down or
  // been drained since the choice, which its lock now settles.
  const auto host = tx.exec_prepared(kLockHostState.name, plan.host_id);
  if (host.empty() || !Placeable(host[0])) return std::nullopt;
  const std::vector<int> free = FreeGpuIndices(tx, plan.host_id);
  if (static_cast<std::int64_t>(free.size()) < needs.gpus) return std::nullopt;
  plan.gpu_indices.assign(free.begin(), free.begin() + needs.gpus);
  plan.state = InstanceState::kProvisioning;
  return plan;
}

PlacementPlan PlanNewInstance(pqxx::transaction_base& tx, const PoolState& counts, const PlacementNeeds& needs) {
  // Free GPUs on one host (the usual case) cost the pool's counts and that host; preempting spot,
  // or saying why nothing fits, needs the whole pool.
  if (auto quick = PlaceOnFreeGpus(tx, counts, needs)) return std::move(*quick);
  return PlanPlacement(LoadPool(tx, counts.region, counts.gpu_model, /*lock=*/true), needs);
}

void ApplyPlacement(pqxx::transaction_base& tx, const FleetContext& fc, const std::string& instance_id,
                    const PlacementPlan& plan) {
  tx.exec_prepared(kAllocate.name, plan.host_id, IntArrayLiteral(plan.gpu_indices), instance_id);
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

int PlacePending(Session& conn, const FleetContext& fc) {
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
    const std::string host = TextFrom(row["host_id"]).value_or("");
    // A pending instance waits on the host it claimed (for GPUs that spot under notice will give
    // back): the pool's lock and that host settle it. Only when its host went away is it planned
    // again against the whole pool. Locks in the documented order: pool, host, instance.
    LockPool(tx, region, model);
    const auto host_row = host.empty() ? pqxx::result() : tx.exec_prepared(kLockHostSlot.name, host);
    const bool placeable = !host_row.empty() && Placeable(host_row[0]);
    std::optional<PoolState> pool;  // its host went away while it waited: plan again, anywhere in the pool
    if (!host_row.empty() && !placeable) pool = LoadPool(tx, region, model, /*lock=*/true);
    if (StateOf(tx.exec_prepared(kLockInstanceState.name, id)[0]["state"]) != InstanceState::kPending) return 0;
    if (host_row.empty()) return 0;  // nothing claimed for it (or its host is gone): it waits
    PlacementPlan plan;
    if (placeable) {
      const std::vector<int> free = FreeGpuIndices(tx, host);
      const std::int64_t free_ports = host_row[0]["free_ports"].as<std::int64_t>();
      if (static_cast<std::int64_t>(free.size()) >= gpus && free_ports >= needs.ports) {
        plan.state = InstanceState::kProvisioning;
        plan.host_id = host;
        plan.gpu_indices.assign(free.begin(), free.begin() + gpus);
      }
    } else {
      for (auto& h : pool->hosts) {
        if (h.id != host) continue;
        h.claimed -= gpus;  // its own claim
        pool->on_demand -= gpus;
        try {
          plan = PlanPlacement(*pool, needs);
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

}  // namespace spillway
