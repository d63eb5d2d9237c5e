// The spot repricer: each pool's price from its spare capacity (billing/spot_curve), every
// spot.reprice_interval and at the next tick after a pool's capacity changed.
#include "provisioning/fleet.hpp"

#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/sql.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

namespace {

const Statement kMarkToReprice{"pool_mark_to_reprice",
                               "INSERT INTO pools_to_reprice (region, gpu_model, marked_at) VALUES ($1, $2, now()) "
                               "ON CONFLICT (region, gpu_model) DO NOTHING"};
const Statement kMarkedToReprice{"pools_marked_to_reprice",
                                 "SELECT region, gpu_model FROM pools_to_reprice ORDER BY marked_at, region, gpu_model"};
const Statement kTakeRepriceMark{"pool_take_reprice_mark",
                                 "DELETE FROM pools_to_reprice WHERE region = $1 AND gpu_model = $2"};

// One pool's pass, in `tx` under the pool's lock, from its counts: returns 1 when it wrote a new
// price. Only the hosts of the spot instances it preempts are locked (in id order).
int RepricePool(pqxx::transaction_base& tx, const FleetContext& fc, const std::string& reg, const std::string& model) {
  const SpotPolicy& policy = fc.settings.spot;
  LockPool(tx, reg, model);
  const PoolState pool = LoadPoolCounts(tx, reg, model);
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
  const auto below = tx.exec_prepared(kSpotBidsBelow.name, reg, model, next);
  std::string locked;
  for (const auto& r : below) {
    const std::string host = r["host_id"].as<std::string>();
    if (host != locked) LockHost(tx, host);
    locked = host;
    PreemptSpot(tx, fc, r["id"].as<std::string>(), "price");
  }
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

}  // namespace spillway
