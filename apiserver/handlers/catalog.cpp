// Any key: the catalog (instance types, prices, what can be launched where) and the spot history.
#include "apiserver/handlers/catalog.hpp"

#include <boost/json.hpp>
#include <charconv>

#include "apiserver/handlers/common.hpp"
#include "provisioning/fleet.hpp"
#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/clock.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"
#include "core/money.hpp"

namespace spillway::handlers {
Reply ListInstanceTypes(Ctx& ctx) {
  Snapshot tx(ctx.conn);
  std::map<std::string, std::vector<PoolState>> by_model;
  for (const auto& [region, model] : AllPools(tx)) by_model[model].push_back(LoadPool(tx, region, model, false));
  boost::json::array data;
  for (const auto& t : ctx.config.instance_types()) {
    const auto od = OnDemandPriceAt(tx, t.gpu_model, ctx.clock.Now());
    boost::json::array regions;
    for (const auto& p : by_model[t.gpu_model]) {
      std::int64_t fits = 0;  // instances of this type that fit on one host's free GPUs, summed
      for (const auto& h : p.hosts)
        if (h.placeable && h.FreeEffective() > 0) fits += h.FreeEffective() / t.gpus;
      const auto spot = CurrentSpotPrice(tx, p.region, t.gpu_model);
      const std::int64_t od_room = std::max<std::int64_t>(0, p.total - p.reserved - p.on_demand);
      regions.push_back({{"region", p.region},
                         {"spot_price_per_gpu_hour", spot ? boost::json::value(FormatMicros(*spot)) : boost::json::value(nullptr)},
                         {"free_gpus", p.Spare()},
                         {"available_on_demand", od_room / t.gpus},
                         {"available_spot", std::min(fits, p.Spare() / t.gpus)}});
    }
    data.push_back({{"name", t.name},
                    {"gpu_model", t.gpu_model},
                    {"gpus", t.gpus},
                    {"vcpus", t.vcpus},
                    {"memory_gib", t.memory_gib},
                    {"on_demand_price_per_gpu_hour", od ? boost::json::value(FormatMicros(*od)) : boost::json::value(nullptr)},
                    {"regions", std::move(regions)}});
  }
  return {200, boost::json::object{{"data", std::move(data)}}};
}

Reply ListSpotPrices(Ctx& ctx) {
  const int limit = ctx.Limit(100, 1000);
  std::int64_t since_us = (EpochMs(ctx.clock.Now()) - 24LL * 3600 * 1000) * 1000;
  if (const std::string since = ctx.Query("since"); !since.empty()) {
    const auto t = ParseTime(since);
    if (!t) throw ApiError(400, "invalid_parameter", "since must be an RFC 3339 UTC time such as 2026-11-26T00:00:00Z");
    since_us = t->time_since_epoch().count() * 1000;
  }
  // The cursor is the last row's effective_from in microseconds since the epoch.
  // Cursors this API returns are times between 1970 and 9999; anything else was not one of them.
  constexpr std::int64_t kMaxCursorUs = 253402300799999999;
  std::int64_t after_us = 0;
  if (const std::string cursor = ctx.Query("cursor"); !cursor.empty()) {
    auto [p, ec] = std::from_chars(cursor.data(), cursor.data() + cursor.size(), after_us);
    if (ec != std::errc() || p != cursor.data() + cursor.size() || after_us < 0 || after_us > kMaxCursorUs)
      throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  }
  pqxx::nontransaction tx(ctx.conn);
  const auto points = SpotPriceHistory(tx, ctx.Query("region"), ctx.Query("gpu_model"), since_us, after_us, limit + 1);
  boost::json::array data;
  for (size_t i = 0; i < points.size() && i < static_cast<size_t>(limit); ++i) {
    const auto& p = points[i].price;
    data.push_back({{"region", p.region},
                    {"gpu_model", p.gpu_model},
                    {"effective_from", FormatTime(FromEpochMs(points[i].effective_from_us / 1000))},
                    {"price_per_gpu_hour", FormatMicros(p.price_micros)},
                    {"on_demand_price_per_gpu_hour", FormatMicros(p.on_demand_micros)},
                    {"spare_fraction", static_cast<double>(p.spare_fraction_ppm) / kPpm},
                    {"target_price_per_gpu_hour", FormatMicros(p.target_micros)}});
  }
  boost::json::value next = nullptr;
  if (points.size() > static_cast<size_t>(limit)) next = std::to_string(points[limit - 1].effective_from_us);
  return {200, boost::json::object{{"data", std::move(data)}, {"next_cursor", next}}};
}

}  // namespace spillway::handlers
