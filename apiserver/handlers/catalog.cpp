// Any key: the catalog (instance types, prices, what can be launched where) and the spot history.
#include "apiserver/handlers/catalog.hpp"

#include <boost/json.hpp>
#include <charconv>

#include "apiserver/handlers/common.hpp"
#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/clock.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"
#include "core/money.hpp"
#include "provisioning/fleet.hpp"

namespace spillway::handlers {
namespace {

boost::json::object PriceJson(const SpotPricePoint& point) {
  const auto& p = point.price;
  return {{"region", p.region},
          {"gpu_model", p.gpu_model},
          {"effective_from", FormatTime(FromEpochMs(point.effective_from_us / 1000))},
          {"price_per_gpu_hour", FormatMicros(p.price_micros)},
          {"on_demand_price_per_gpu_hour", FormatMicros(p.on_demand_micros)},
          {"spare_fraction", static_cast<double>(p.spare_fraction_ppm) / kPpm},
          {"target_price_per_gpu_hour", FormatMicros(p.target_micros)}};
}

}  // namespace

Reply ListInstanceTypes(Ctx& ctx) {
  return ctx.ReadSnapshot([&](Tx& tx) {
    std::map<std::string, std::vector<PoolView>> by_model;
    for (const auto& [region, model] : AllPools(tx)) by_model[model].push_back(LoadPoolView(tx, region, model));
    boost::json::array data;
    for (const auto& t : ctx.config.instance_types()) {
      const auto od = OnDemandPriceAt(tx, t.gpu_model, ctx.clock.Now());
      const auto next = NextPrice(tx, t.gpu_model, ctx.clock.Now());
      boost::json::array regions;
      for (const auto& v : by_model[t.gpu_model]) {
        const PoolState& p = v.counts;
        if (!p.Offers(t.gpus)) continue;  // no host here could ever hold it
        const auto spot = CurrentSpotPrice(tx, p.region, t.gpu_model);
        const std::int64_t od_room = std::max<std::int64_t>(0, p.Offerable() - p.reserved - p.on_demand);
        regions.push_back({{"region", p.region},
                           {"spot_price_per_gpu_hour", JsonMicros(spot)},
                           {"free_gpus", p.Spare()},
                           {"available_on_demand", std::min(v.FitsPreemptingSpot(t.gpus), od_room / t.gpus)},
                           {"available_spot", std::min(v.FitsOnFree(t.gpus), p.Spare() / t.gpus)}});
      }
      data.push_back({{"name", t.name},
                      {"gpu_model", t.gpu_model},
                      {"gpus", t.gpus},
                      {"vcpus", t.vcpus},
                      {"memory_gib", t.memory_gib},
                      {"on_demand_price_per_gpu_hour", JsonMicros(od)},
                      {"next_on_demand_price", next ? boost::json::value{{"price_per_gpu_hour", FormatMicros(next->price_micros)},
                                                                          {"effective_from", FormatTime(next->effective_from)}}
                                                    : boost::json::value(nullptr)},
                      {"regions", std::move(regions)}});
    }
    return Reply{200, boost::json::object{{"data", std::move(data)}}};
  });
}

Reply ListSpotPrices(Ctx& ctx) {
  SpotHistoryQuery q;
  q.limit = ctx.Limit(100, 1000);
  q.region = ctx.Query("region");
  q.gpu_model = ctx.Query("gpu_model");
  const std::string order = ctx.Query("order");
  if (!order.empty() && order != "asc" && order != "desc")
    throw ApiError(400, "invalid_parameter", "order must be asc (oldest first, the default) or desc (newest first)");
  q.newest_first = order == "desc";
  q.since_us = (EpochMs(ctx.clock.Now()) - 24LL * 3600 * 1000) * 1000;
  if (const std::string since = ctx.Query("since"); !since.empty()) {
    const auto t = ParseTime(since);
    if (!t) throw ApiError(400, "invalid_parameter", "since must be an RFC 3339 UTC time such as 2026-11-26T00:00:00Z");
    q.since_us = t->time_since_epoch().count() * 1000;
  }
  // The cursor is the last row's effective_from in microseconds since the epoch.
  // Cursors this API returns are times between 1970 and 9999; anything else was not one of them.
  constexpr std::int64_t kMaxCursorUs = 253402300799999999;
  if (const std::string cursor = ctx.Query("cursor"); !cursor.empty()) {
    auto [p, ec] = std::from_chars(cursor.data(), cursor.data() + cursor.size(), q.cursor_us);
    if (ec != std::errc() || p != cursor.data() + cursor.size() || q.cursor_us <= 0 || q.cursor_us > kMaxCursorUs)
      throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  }
  const int limit = q.limit++;
  const auto points = ctx.Read([&](Tx& tx) { return SpotPriceHistory(tx, q); });
  return {200, Page(points, limit, PriceJson, [](const SpotPricePoint& p) { return std::to_string(p.effective_from_us); })};
}

Reply ListLatestSpotPrices(Ctx& ctx) {
  const auto points = ctx.Read([&](Tx& tx) { return spillway::LatestSpotPrices(tx, ctx.Query("region"), ctx.Query("gpu_model")); });
  boost::json::array data;
  for (const auto& p : points) data.push_back(PriceJson(p));
  return {200, boost::json::object{{"data", std::move(data)}}};
}

}  // namespace spillway::handlers
