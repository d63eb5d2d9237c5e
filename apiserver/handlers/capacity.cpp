// Operators and finance: capacity pools and the internal reservation.
#include "apiserver/handlers/capacity.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "provisioning/fleet.hpp"
#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"
#include "core/money.hpp"

namespace spillway::handlers {
namespace {

boost::json::object PoolJson(Tx& tx, const PoolView& v, TimeMs now) {
  const PoolState& p = v.counts;
  const auto od = OnDemandPriceAt(tx, p.gpu_model, now);
  const auto spot = CurrentSpotPrice(tx, p.region, p.gpu_model);
  return {{"region", p.region},
          {"gpu_model", p.gpu_model},
          {"hosts", v.hosts},
          {"placeable_hosts", v.placeable_hosts},
          {"total_gpus", p.total},
          {"internal_reserved_gpus", p.reserved},
          {"on_demand_gpus", p.on_demand},
          {"spot_gpus", p.spot_active + p.spot_leaving},
          {"spot_gpus_under_notice", p.spot_leaving},
          {"spare_gpus", p.Spare()},
          {"spare_fraction", static_cast<double>(SpareFractionPpm(p.Spare(), p.total)) / kPpm},
          {"on_demand_price_per_gpu_hour", od ? boost::json::value(FormatMicros(*od)) : boost::json::value(nullptr)},
          {"spot_price_per_gpu_hour", spot ? boost::json::value(FormatMicros(*spot)) : boost::json::value(nullptr)}};
}

}  // namespace

Reply GetCapacity(Ctx& ctx) {
  return ctx.ReadSnapshot([&](Tx& tx) {
    boost::json::array data;
    for (const auto& [region, model] : AllPools(tx))
      data.push_back(PoolJson(tx, LoadPoolView(tx, region, model), ctx.clock.Now()));
    return Reply{200, boost::json::object{{"data", std::move(data)}}};
  });
}

Reply SetPoolCapacity(Ctx& ctx) {
  const std::string& region = ctx.Param("region");
  const std::string& model = ctx.Param("gpu_model");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"internal_reserved_gpus"});
  const auto reserved = OptInt(body, "internal_reserved_gpus", 0, 1'000'000);
  if (!reserved) throw ApiError(422, "validation_failed", "internal_reserved_gpus: is required");
  const FleetContext fc{*ctx.fleet, ctx.fleet_metrics, ctx.clock};
  auto json = ctx.Write([&](Tx& tx) {
    SetReservation(tx, fc, region, model, *reserved);
    RecordAudit(tx, ctx.AuditOf("", "capacity.reserve", region + "/" + model + "=" + std::to_string(*reserved)));
    return PoolJson(tx, LoadPoolView(tx, region, model), ctx.clock.Now());
  });
  // Less spare capacity moves the spot price now rather than at the next reprice.
  Reprice(ctx.conn, fc, region, model);
  return {200, std::move(json)};
}

}  // namespace spillway::handlers
