// Pools (a region and GPU model): their state as placement and pricing see it, and the operator's
// internal reservation.
#include "provisioning/fleet.hpp"

#include <algorithm>
#include <map>

#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/sql.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

bool PoolState::Offers(std::int64_t gpus) const { return largest_host >= gpus; }

std::int64_t PoolState::Spare() const {
  return std::max<std::int64_t>(0, Offerable() - reserved - on_demand - spot_active - spot_leaving);
}

std::vector<std::pair<std::string, std::string>> AllPools(pqxx::transaction_base& tx) {
  std::vector<std::pair<std::string, std::string>> pools;
  for (const auto& r : tx.exec_prepared(kAllPools.name))
    pools.emplace_back(r["region"].as<std::string>(), r["gpu_model"].as<std::string>());
  return pools;
}

void LockPool(pqxx::transaction_base& tx, const std::string& region, const std::string& gpu_model) {
  tx.exec_prepared(kLockPool.name, region, gpu_model);
}

PoolState LoadPoolCounts(pqxx::transaction_base& tx, const std::string& region, const std::string& gpu_model) {
  PoolState p;
  p.region = region;
  p.gpu_model = gpu_model;
  const auto r = tx.exec_params(kPoolCounts.sql, region, gpu_model)[0];
  p.total = r["total"].as<std::int64_t>();
  p.largest_host = r["largest_host"].as<std::int64_t>();
  p.on_demand = r["on_demand"].as<std::int64_t>();
  p.spot_leaving = r["spot_leaving"].as<std::int64_t>();
  p.spot_active = r["spot_active"].as<std::int64_t>();
  p.draining_idle = r["draining_idle"].as<std::int64_t>();
  p.reserved = r["reserved"].as<std::int64_t>();
  return p;
}

std::int64_t FoldPoolCapacity(Session& conn) {
  return InTransaction(conn, [](pqxx::work& tx) { return tx.exec_prepared(kFoldPoolCapacity.name).affected_rows(); });
}

PoolView LoadPoolView(pqxx::transaction_base& tx, const std::string& region, const std::string& gpu_model) {
  PoolView v;
  v.counts = LoadPoolCounts(tx, region, gpu_model);
  for (const auto& r : tx.exec_prepared(kPoolView.name, region, gpu_model)) {
    const std::int64_t hosts = r["hosts"].as<std::int64_t>();
    v.hosts += hosts;
    if (!r["placeable"].as<bool>()) continue;
    v.placeable_hosts += hosts;
    v.placeable.push_back({r["free"].as<std::int64_t>(), r["reclaimable"].as<std::int64_t>(), hosts});
  }
  return v;
}

std::int64_t PoolView::FitsOnFree(std::int64_t gpus) const {
  std::int64_t n = 0;
  for (const auto& b : placeable) n += b.hosts * (b.free / gpus);
  return n;
}

std::int64_t PoolView::FitsPreemptingSpot(std::int64_t gpus) const {
  std::int64_t n = 0;
  for (const auto& b : placeable) n += b.hosts * ((b.free + b.reclaimable) / gpus);
  return n;
}

PoolState LoadPool(pqxx::transaction_base& tx, const std::string& region, const std::string& gpu_model, bool lock) {
  if (lock) LockPool(tx, region, gpu_model);
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
    h.placeable = Placeable(state, health);
    h.draining = state == "draining" && health == "up";
    if (health == "up" && state != "disabled") p.total += h.gpu_count;
    p.largest_host = std::max(p.largest_host, h.gpu_count);
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

}  // namespace spillway
