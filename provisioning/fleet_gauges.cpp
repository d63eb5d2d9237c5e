// The fleet's gauges (GPUs per pool and use, instances, hosts, heartbeat age), set each tick.
#include "provisioning/fleet.hpp"

#include <prometheus/family.h>
#include <prometheus/gauge.h>

#include "provisioning/fleet_metrics.hpp"
#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/sql.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

void RefreshFleetGauges(Session& conn, const FleetContext& fc) {
  if (!fc.metrics) return;
  pqxx::work tx(conn);
  for (const auto& [region, model] : AllPools(tx)) {
    const PoolState p = LoadPoolCounts(tx, region, model);  // each tick: counts, never the pool's rows
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
    if (const auto od = OnDemandPriceAt(tx, model, fc.clock.Now()))
      fc.metrics->spot_floor->Add({{"region", region}, {"gpu_model", model}})
          .Set(static_cast<double>(SpotFloor(*od, fc.settings.spot)) / static_cast<double>(kPpm));
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
