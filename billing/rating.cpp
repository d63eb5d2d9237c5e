#include "billing/rating.hpp"

#include <map>

#include "core/db.hpp"
#include "core/sql.hpp"

namespace spillway::billing {
namespace {

const Statement kRatedUsage{"billing_rated_usage", R"sql(
SELECT instance_id, market, )sql" SPW_EPOCH_MS("hour") R"sql( AS hour_ms, price_micros_per_gpu_hour, gpu_ms, unmetered
FROM usage_rated_hourly
WHERE tenant_id = $1 AND hour >= to_timestamp($2::bigint / 1000.0) AND hour < to_timestamp($3::bigint / 1000.0)
ORDER BY instance_id, hour)sql"};

}  // namespace

std::int64_t UsageLine::micro_gpu_hours() const {
  return static_cast<std::int64_t>(DivideHalfEven(static_cast<Int128>(gpu_ms) * 1'000'000, kMsPerHour));
}

std::int64_t UsageLine::average_price_micros() const {
  const std::int64_t priced = gpu_ms - unpriced_gpu_ms;
  if (priced <= 0) return 0;
  // amount / hours = (numerator / 3,600,000) / (priced / 3,600,000) = numerator / priced
  return static_cast<std::int64_t>(DivideHalfEven(amount.numerator(), priced));
}

std::vector<UsageLine> RateUsage(const std::vector<RatedUsage>& rows) {
  std::map<std::string, UsageLine> lines;
  for (const auto& r : rows) {
    auto [it, fresh] = lines.try_emplace(r.instance_id);
    UsageLine& line = it->second;
    if (fresh) {
      line.instance_id = r.instance_id;
      line.market = r.market;
    }
    line.gpu_ms += r.gpu_ms;
    if (r.unmetered) line.unmetered_gpu_ms += r.gpu_ms;
    if (r.price_micros) line.amount.Add(r.gpu_ms, *r.price_micros);
    else line.unpriced_gpu_ms += r.gpu_ms;
  }
  std::vector<UsageLine> out;
  for (auto& [id, line] : lines) out.push_back(std::move(line));
  return out;
}

std::vector<RatedUsage> RatedUsageOf(Tx& tx, const std::string& tenant_id, TimeMs from, TimeMs to) {
  std::vector<RatedUsage> out;
  for (const auto& r : tx.exec_prepared(kRatedUsage.name, tenant_id, EpochMs(from), EpochMs(to)))
    out.push_back({r["instance_id"].as<std::string>(), r["market"].as<std::string>(), *TimeFrom(r["hour_ms"]),
                   r["gpu_ms"].as<std::int64_t>(), IntFrom(r["price_micros_per_gpu_hour"]), r["unmetered"].as<bool>()});
  return out;
}

}  // namespace spillway::billing
