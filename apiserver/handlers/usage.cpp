// Metered usage (docs/architecture.md, "Metering"): read from the hourly rollups.
#include "apiserver/handlers/usage.hpp"

#include <boost/json.hpp>

#include <algorithm>

#include "apiserver/handlers/common.hpp"
#include "billing/invoice.hpp"
#include "core/errors.hpp"
#include "metering/usage.hpp"

namespace spillway::handlers {
namespace {

constexpr std::int64_t kHourMs = 3'600'000;
constexpr std::int64_t kDayMs = 24 * kHourMs;

// Six decimals, rounded half-even as an invoice's quantity is, so a month's usage read here and the
// invoice's GPU-hours agree to the last place.
std::string GpuHours(std::int64_t gpu_ms) { return billing::FormatGpuHours(gpu_ms); }
// A coverage: four decimals, rounded down, so a ratio that is not 1 is never shown as 1; null for
// nothing to compare with.
boost::json::value Ratio(std::int64_t part, std::int64_t whole) {
  if (whole <= 0) return nullptr;
  return static_cast<double>(static_cast<__int128>(part) * 10'000 / whole) / 1e4;
}
std::string KiloWattHours(std::int64_t mj) { return FormatMicros((mj + 1800) / 3600); }      // mJ -> µkWh

struct Window {
  TimeMs from, to;
  bool daily;
};

// ?from=&to= (RFC 3339, widened to whole hours or days) and ?granularity=; by default the last
// 24 hours (hourly) or 31 days (daily) up to now.
Window ReadWindow(const Ctx& ctx) {
  const std::string g = ctx.Query("granularity");
  if (!g.empty() && g != "hour" && g != "day")
    throw ApiError(400, "invalid_parameter", "granularity must be hour or day");
  const bool daily = g == "day";
  const std::int64_t unit = daily ? kDayMs : kHourMs;
  auto at = [&](const char* name) -> std::optional<TimeMs> {
    const std::string v = ctx.Query(name);
    if (v.empty()) return std::nullopt;
    const auto t = ParseTime(v);
    if (!t) throw ApiError(400, "invalid_parameter", std::string(name) + " must be an RFC 3339 time in UTC");
    if (EpochMs(*t) < 0 || EpochMs(*t) > 253'402'300'799'999)  // 1970 to 9999
      throw ApiError(400, "invalid_parameter", std::string(name) + " must be between 1970 and 9999");
    return t;
  };
  const std::int64_t now = EpochMs(ctx.clock.Now());
  std::int64_t to = at("to") ? EpochMs(*at("to")) : now;
  to = (to + unit - 1) / unit * unit;
  std::int64_t from = at("from") ? EpochMs(*at("from")) : to - (daily ? 31 : 24) * unit;
  from = from / unit * unit;
  if (from >= to) throw ApiError(400, "invalid_parameter", "from must be before to");
  const std::int64_t max = daily ? 366 * kDayMs : 31 * kDayMs;
  if (to - from > max)
    throw ApiError(400, "invalid_parameter",
                   daily ? "at most 366 days at a time" : "at most 31 days at a time by hour (use granularity=day)");
  return {FromEpochMs(from), FromEpochMs(to), daily};
}

}  // namespace

Reply GetUsage(Ctx& ctx) {
  const Window w = ReadWindow(ctx);
  std::string tenant = ctx.Query("tenant_id");
  if (ctx.principal.role_bit == kMember) {
    if (tenant.empty()) tenant = ctx.principal.tenant_id;
    ctx.RequireTenant(tenant);
  } else if (tenant.empty()) {
    throw ApiError(400, "invalid_parameter", "tenant_id is required for a " + ctx.principal.role + " key");
  }
  const metering::UsageQuery q{tenant, ctx.Query("instance_id"), w.from, w.to, w.daily};
  const auto report = ctx.ReadSnapshot([&](Tx& tx) { return metering::TenantUsage(tx, q, ctx.clock.Now()); });
  boost::json::array data, instances;
  for (const auto& r : report.rows)
    data.push_back({{"instance_id", r.instance_id},
                    {"period_start", FormatTime(r.period)},
                    {"gpu_hours", GpuHours(r.gpu_ms)},
                    {"samples", r.samples},
                    {"mean_util_pct", std::round(r.util_pct_mean * 10) / 10},
                    {"energy_kwh", KiloWattHours(r.energy_mj)},
                    {"peak_mem_bytes", r.mem_peak_bytes}});
  for (const auto& i : report.instances) {
    instances.push_back({{"instance_id", i.instance_id},
                         {"gpu_hours", GpuHours(i.metered_gpu_ms)},
                         {"running_gpu_hours", GpuHours(i.running_gpu_ms)},
                         {"coverage", Ratio(i.metered_gpu_ms, i.running_gpu_ms)},
                         {"held_gpu_hours", GpuHours(i.held_gpu_ms)},
                         {"held_coverage", Ratio(i.metered_gpu_ms, i.held_gpu_ms)},
                         // Held with no sample of it, up to complete_through: never billed.
                         {"held_gpu_seconds", i.held_gpu_ms / 1000},
                         {"metered_gpu_seconds", i.metered_gpu_ms / 1000},
                         {"unmetered_gpu_seconds", std::max<std::int64_t>(0, i.held_gpu_ms - i.metered_gpu_ms) / 1000},
                         {"complete_through", JsonTime(i.complete_through)}});
  }
  return {200, boost::json::object{{"tenant_id", tenant},
                                   {"from", FormatTime(w.from)},
                                   {"to", FormatTime(w.to)},
                                   {"granularity", w.daily ? "day" : "hour"},
                                   {"usage_complete_through", JsonTime(report.complete_through)},
                                   {"data", std::move(data)},
                                   {"instances", std::move(instances)}}};
}

Reply GetFleetUsage(Ctx& ctx) {
  const Window w = ReadWindow(ctx);
  const auto rows = ctx.Read([&](Tx& tx) {
    return metering::FleetUsage(tx, w.from, w.to, ctx.Query("region"), ctx.Query("gpu_model"), w.daily);
  });
  boost::json::array data;
  for (const auto& r : rows) {
    const std::int64_t all = r.allocated_gpu_ms + r.idle_gpu_ms;
    data.push_back({{"region", r.region},
                    {"gpu_model", r.gpu_model},
                    {"period_start", FormatTime(r.period)},
                    {"allocated_gpu_hours", GpuHours(r.allocated_gpu_ms)},
                    {"idle_gpu_hours", GpuHours(r.idle_gpu_ms)},
                    {"allocated_fraction", all > 0 ? std::round(static_cast<double>(r.allocated_gpu_ms) / all * 1e4) / 1e4 : 0.0},
                    {"mean_util_pct", std::round(r.util_pct_mean * 10) / 10},
                    {"energy_kwh", KiloWattHours(r.energy_mj)}});
  }
  return {200, boost::json::object{{"from", FormatTime(w.from)},
                                   {"to", FormatTime(w.to)},
                                   {"granularity", w.daily ? "day" : "hour"},
                                   {"data", std::move(data)}}};
}

}  // namespace spillway::handlers
