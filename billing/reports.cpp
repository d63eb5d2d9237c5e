#include "billing/reports.hpp"

#include <algorithm>
#include <map>

#include "billing/invoices.hpp"
#include "billing/storage_sql.hpp"
#include "core/db.hpp"
#include "core/sql.hpp"

namespace spillway::billing {
namespace {

const Statement kRevenueUsage{"report_revenue_usage", R"sql(
SELECT i.region, i.gpu_model, r.market, r.price_micros_per_gpu_hour AS price,
       r.list_price_micros_per_gpu_hour AS list_price, sum(r.gpu_ms)::bigint AS gpu_ms
FROM usage_rated_hourly r JOIN instances i ON i.id = r.instance_id
WHERE r.hour >= )sql" SPW_TS(1) " AND r.hour < " SPW_TS(2) R"sql(
GROUP BY i.region, i.gpu_model, r.market, r.price_micros_per_gpu_hour, r.list_price_micros_per_gpu_hour)sql"};
const Statement kRevenuePools{"report_revenue_pools", R"sql(
SELECT region, gpu_model, sum(idle_gpu_ms)::bigint AS idle_ms FROM pool_usage_hourly
WHERE hour >= )sql" SPW_TS(1) " AND hour < " SPW_TS(2) R"sql( GROUP BY region, gpu_model)sql"};
// Every volume's GB-ms in [$1, $2) per region and storage price in effect (as billing/invoices).
const Statement kRevenueStorage{"report_revenue_storage",
                                "WITH " SPW_STORAGE_SPANS " SELECT v.region, sp.price, sum(" SPW_STORAGE_GB_MS(1, 2)
                                ")::bigint AS gb_ms" SPW_STORAGE_FROM(1, 2) " GROUP BY v.region, sp.price"};

// Held GPU time never metered per pool, at the on-demand list price in effect at each hour's start.
const Statement kRevenueUnmetered{"report_revenue_unmetered", R"sql(
SELECT u.region, u.gpu_model, p.price, sum(u.held_gpu_ms - u.metered_gpu_ms)::bigint AS gpu_ms
FROM unmetered_hourly u
LEFT JOIN LATERAL (SELECT price_micros_per_gpu_hour AS price FROM prices
                   WHERE gpu_model = u.gpu_model AND market = 'on_demand' AND effective_from <= u.hour
                   ORDER BY effective_from DESC LIMIT 1) p ON true
WHERE u.hour >= )sql" SPW_TS(1) " AND u.hour < " SPW_TS(2) R"sql(
GROUP BY u.region, u.gpu_model, p.price)sql"};

// What was billed of it (billing.unmetered_held_time = bill: rated rows marked unmetered).
const Statement kRevenueUnmeteredBilled{"report_revenue_unmetered_billed", R"sql(
SELECT i.region, i.gpu_model, r.price_micros_per_gpu_hour AS price, sum(r.gpu_ms)::bigint AS gpu_ms
FROM usage_rated_hourly r JOIN instances i ON i.id = r.instance_id
WHERE r.unmetered AND r.hour >= )sql" SPW_TS(1) " AND r.hour < " SPW_TS(2) R"sql(
GROUP BY i.region, i.gpu_model, r.price_micros_per_gpu_hour)sql"};

}  // namespace

RevenueReport RevenueOf(Tx& tx, const Month& month, TimeMs now) {
  RevenueReport out;
  out.month = month;
  out.closed = PeriodClosed(tx, month.Label());
  const std::int64_t from = EpochMs(month.begin), to = EpochMs(month.end);
  std::map<std::tuple<std::string, std::string, std::string>, RevenueLine> lines;
  std::map<std::pair<std::string, std::string>, PoolSpare> pools;
  for (const auto& r : tx.exec_prepared(kRevenueUsage.name, from, to)) {
    const std::string region = r["region"].as<std::string>(), model = r["gpu_model"].as<std::string>(),
                      market = r["market"].as<std::string>();
    RevenueLine& l = lines[{region, model, market}];
    l.region = region, l.gpu_model = model, l.market = market;
    const std::int64_t ms = r["gpu_ms"].as<std::int64_t>();
    l.gpu_ms += ms;
    const auto price = IntFrom(r["price"]);
    if (price) l.billed.Add(ms, *price);
    else l.unpriced_gpu_ms += ms;
    // With no list price then, the list value is what was billed (no discount is claimed).
    if (const auto list = IntFrom(r["list_price"])) l.list.Add(ms, *list);
    else if (price) l.list.Add(ms, *price);
    PoolSpare& p = pools[{region, model}];
    p.region = region, p.gpu_model = model;
    if (market == "spot") p.spot_sold_gpu_ms += ms;
  }
  for (const auto& r : tx.exec_prepared(kRevenuePools.name, from, to)) {
    const std::string region = r["region"].as<std::string>(), model = r["gpu_model"].as<std::string>();
    PoolSpare& p = pools[{region, model}];
    p.region = region, p.gpu_model = model;
    p.idle_gpu_ms += r["idle_ms"].as<std::int64_t>();
  }
  // Storage of an open month up to the hour the volume metering has reached (as drafts bill it), and
  // never past now.
  std::int64_t through = std::min(EpochMs(now), EpochMs(VolumeMeteredThrough(tx, now)));
  if (now >= month.end) through = std::max(through, to);  // an ended month: all of it (as its close bills it)
  through = std::clamp(through, from, to);
  const int days = static_cast<int>((to - from) / kMsPerDay);
  std::map<std::string, StorageRevenue> storage;
  for (const auto& r : tx.exec_prepared(kRevenueStorage.name, from, through)) {
    const std::string region = r["region"].as<std::string>();
    auto [it, fresh] = storage.try_emplace(region, days);
    it->second.region = region;
    it->second.gb_ms += r["gb_ms"].as<std::int64_t>();
    it->second.amount.Add(r["gb_ms"].as<std::int64_t>(), r["price"].as<std::int64_t>());
  }
  std::map<std::pair<std::string, std::string>, PoolUnmetered> unmetered;
  for (const auto& r : tx.exec_prepared(kRevenueUnmetered.name, from, to)) {
    const std::string region = r["region"].as<std::string>(), model = r["gpu_model"].as<std::string>();
    PoolUnmetered& u = unmetered[{region, model}];
    u.region = region, u.gpu_model = model;
    const std::int64_t ms = r["gpu_ms"].as<std::int64_t>();
    u.gpu_ms += ms;
    if (const auto price = IntFrom(r["price"])) u.list.Add(ms, *price);
  }
  for (const auto& r : tx.exec_prepared(kRevenueUnmeteredBilled.name, from, to)) {
    const std::string region = r["region"].as<std::string>(), model = r["gpu_model"].as<std::string>();
    PoolUnmetered& u = unmetered[{region, model}];
    u.region = region, u.gpu_model = model;
    if (const auto price = IntFrom(r["price"])) u.billed.Add(r["gpu_ms"].as<std::int64_t>(), *price);
  }
  for (auto& [k, u] : unmetered) out.unmetered.push_back(std::move(u));
  for (auto& [k, l] : lines) out.lines.push_back(std::move(l));
  for (auto& [k, p] : pools) out.pools.push_back(std::move(p));
  for (auto& [k, s] : storage) out.storage.push_back(std::move(s));
  return out;
}

}  // namespace spillway::billing
