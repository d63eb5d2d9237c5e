#include "billing/prices.hpp"

#include "core/db.hpp"
#include "core/log.hpp"
#include "core/money.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

const Statement kOnDemandAt{"price_on_demand_at", R"sql(
SELECT price_micros_per_gpu_hour FROM prices
WHERE gpu_model = $1 AND market = 'on_demand' AND effective_from <= $2::timestamptz
ORDER BY effective_from DESC LIMIT 1)sql"};
const Statement kSpotAt{"price_spot_at", R"sql(
SELECT price_micros_per_gpu_hour FROM spot_prices
WHERE region = $1 AND gpu_model = $2 AND effective_from <= $3::timestamptz
ORDER BY effective_from DESC LIMIT 1)sql"};
const Statement kSpotLatest{"price_spot_latest", R"sql(
SELECT price_micros_per_gpu_hour FROM spot_prices WHERE region = $1 AND gpu_model = $2
ORDER BY effective_from DESC LIMIT 1)sql"};
const Statement kInsertSpot{"price_insert_spot", R"sql(
INSERT INTO spot_prices (region, gpu_model, effective_from, price_micros_per_gpu_hour, on_demand_micros,
                         spare_fraction_ppm, target_micros)
VALUES ($1, $2, clock_timestamp(), $3, $4, $5, $6))sql"};
const Statement kSpotHistory{"price_spot_history", R"sql(
SELECT region, gpu_model, (extract(epoch FROM effective_from) * 1000000)::bigint AS effective_from_us, price_micros_per_gpu_hour,
       on_demand_micros, spare_fraction_ppm, target_micros
FROM spot_prices
WHERE ($1 = '' OR region = $1) AND ($2 = '' OR gpu_model = $2)
  AND effective_from >= to_timestamp($3::bigint / 1000000.0) AND effective_from > to_timestamp($4::bigint / 1000000.0)
ORDER BY effective_from, region, gpu_model LIMIT $5)sql"};
const Statement kSpotHistoryDesc{"price_spot_history_desc", R"sql(
SELECT region, gpu_model, (extract(epoch FROM effective_from) * 1000000)::bigint AS effective_from_us, price_micros_per_gpu_hour,
       on_demand_micros, spare_fraction_ppm, target_micros
FROM spot_prices
WHERE ($1 = '' OR region = $1) AND ($2 = '' OR gpu_model = $2)
  AND effective_from >= to_timestamp($3::bigint / 1000000.0)
  AND ($4::bigint = 0 OR effective_from < to_timestamp($4::bigint / 1000000.0))
ORDER BY effective_from DESC, region, gpu_model LIMIT $5)sql"};
const Statement kSpotLatestAll{"price_spot_latest_all", R"sql(
SELECT DISTINCT ON (region, gpu_model) region, gpu_model, (extract(epoch FROM effective_from) * 1000000)::bigint AS effective_from_us,
       price_micros_per_gpu_hour, on_demand_micros, spare_fraction_ppm, target_micros
FROM spot_prices
WHERE ($1 = '' OR region = $1) AND ($2 = '' OR gpu_model = $2)
ORDER BY region, gpu_model, effective_from DESC)sql"};
const Statement kStorageAt{"price_storage_at", R"sql(
SELECT price_micros_per_gb_month FROM storage_prices WHERE effective_from <= $1::timestamptz
ORDER BY effective_from DESC LIMIT 1)sql"};
const Statement kPriceBook{"price_book", R"sql(
SELECT gpu_model, price_micros, from_ms FROM (
  SELECT gpu_model, price_micros_per_gpu_hour AS price_micros, )sql" SPW_EPOCH_MS("effective_from") R"sql( AS from_ms
  FROM prices WHERE market = 'on_demand'
  UNION ALL
  SELECT '' AS gpu_model, price_micros_per_gb_month AS price_micros, )sql" SPW_EPOCH_MS("effective_from") R"sql( AS from_ms
  FROM storage_prices) book
ORDER BY gpu_model = '', gpu_model, from_ms)sql"};
const Statement kNextOnDemand{"price_next_on_demand", R"sql(
SELECT price_micros_per_gpu_hour AS price_micros, )sql" SPW_EPOCH_MS("effective_from") R"sql( AS from_ms FROM prices
WHERE gpu_model = $1 AND market = 'on_demand' AND effective_from > $2::timestamptz
ORDER BY effective_from LIMIT 1)sql"};
const Statement kNextStorage{"price_next_storage", R"sql(
SELECT price_micros_per_gb_month AS price_micros, )sql" SPW_EPOCH_MS("effective_from") R"sql( AS from_ms
FROM storage_prices WHERE effective_from > $1::timestamptz ORDER BY effective_from LIMIT 1)sql"};
const Statement kInsertStorage{"price_insert_storage",
                               "INSERT INTO storage_prices (effective_from, price_micros_per_gb_month) "
                               "VALUES ($1::timestamptz, $2) ON CONFLICT DO NOTHING"};
const Statement kHasOnDemand{"price_has_on_demand",
                             "SELECT EXISTS (SELECT 1 FROM prices WHERE gpu_model = $1 AND market = 'on_demand') AS has"};
const Statement kHasStorage{"price_has_storage", "SELECT EXISTS (SELECT 1 FROM storage_prices) AS has"};
const Statement kSeedLock{"price_seed_lock", "SELECT pg_advisory_xact_lock(7308324466018009601)"};
const Statement kInsertOnDemand{"price_insert_on_demand",
                                "INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) "
                                "VALUES ($1, 'on_demand', $2, $3::timestamptz) ON CONFLICT DO NOTHING"};

// The price of the one row a price-at-a-time statement finds, if any.
std::optional<std::int64_t> One(const pqxx::result& r) {
  if (r.empty()) return std::nullopt;
  return r[0]["price_micros_per_gpu_hour"].as<std::int64_t>();
}

}  // namespace

std::optional<std::int64_t> OnDemandPriceAt(pqxx::transaction_base& tx, const std::string& gpu_model, TimeMs at) {
  return One(tx.exec_prepared(kOnDemandAt.name, gpu_model, FormatTime(at)));
}

std::optional<std::int64_t> SpotPriceAt(pqxx::transaction_base& tx, const std::string& region,
                                        const std::string& gpu_model, TimeMs at) {
  return One(tx.exec_prepared(kSpotAt.name, region, gpu_model, FormatTime(at)));
}

std::optional<std::int64_t> CurrentSpotPrice(pqxx::transaction_base& tx, const std::string& region,
                                             const std::string& gpu_model) {
  return One(tx.exec_prepared(kSpotLatest.name, region, gpu_model));
}

void RecordSpotPrice(pqxx::transaction_base& tx, const SpotPriceRecord& p) {
  tx.exec_prepared(kInsertSpot.name, p.region, p.gpu_model, p.price_micros, p.on_demand_micros, p.spare_fraction_ppm,
                   p.target_micros);
}

std::vector<SpotPricePoint> Points(const pqxx::result& rows) {
  std::vector<SpotPricePoint> out;
  for (const auto& r : rows) {
    SpotPricePoint p;
    p.price.region = r["region"].as<std::string>();
    p.price.gpu_model = r["gpu_model"].as<std::string>();
    p.effective_from_us = r["effective_from_us"].as<std::int64_t>();
    p.price.price_micros = r["price_micros_per_gpu_hour"].as<std::int64_t>();
    p.price.on_demand_micros = r["on_demand_micros"].as<std::int64_t>();
    p.price.spare_fraction_ppm = r["spare_fraction_ppm"].as<std::int64_t>();
    p.price.target_micros = r["target_micros"].as<std::int64_t>();
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<SpotPricePoint> SpotPriceHistory(pqxx::transaction_base& tx, const SpotHistoryQuery& q) {
  if (q.newest_first)
    return Points(tx.exec_prepared(kSpotHistoryDesc.name, q.region, q.gpu_model, q.since_us, q.cursor_us, q.limit));
  return Points(tx.exec_prepared(kSpotHistory.name, q.region, q.gpu_model, q.since_us, q.cursor_us, q.limit));
}

std::vector<SpotPricePoint> LatestSpotPrices(pqxx::transaction_base& tx, const std::string& region,
                                             const std::string& gpu_model) {
  return Points(tx.exec_prepared(kSpotLatestAll.name, region, gpu_model));
}

int SeedPriceBook(pqxx::connection_base& conn, const std::vector<OnDemandPrice>& prices,
                  std::int64_t storage_micros_per_gb_month, TimeMs now) {
  return InTransaction(conn, [&](pqxx::work& tx) {
    tx.exec_prepared(kSeedLock.name);
    int added = 0;
    for (const auto& p : prices) {
      if (tx.exec_prepared1(kHasOnDemand.name, p.gpu_model)["has"].as<bool>()) continue;  // finance's from now on
      tx.exec_prepared(kInsertOnDemand.name, p.gpu_model, p.micros_per_gpu_hour, FormatTime(now));
      log::Info("price book: a GPU model's first on-demand price, from the config",
                {{"gpu_model", p.gpu_model}, {"price_per_gpu_hour", FormatMicros(p.micros_per_gpu_hour)}});
      ++added;
    }
    if (!tx.exec_prepared1(kHasStorage.name)["has"].as<bool>()) {
      tx.exec_prepared(kInsertStorage.name, FormatTime(now), storage_micros_per_gb_month);
      log::Info("price book: the first storage price, from the config",
                {{"price_per_gb_month", FormatMicros(storage_micros_per_gb_month)}});
      ++added;
    }
    return added;
  });
}

std::optional<std::int64_t> StoragePriceAt(pqxx::transaction_base& tx, TimeMs at) {
  const auto r = tx.exec_prepared(kStorageAt.name, FormatTime(at));
  if (r.empty()) return std::nullopt;
  return r[0]["price_micros_per_gb_month"].as<std::int64_t>();
}

std::vector<PriceBookEntry> PriceBook(pqxx::transaction_base& tx) {
  std::vector<PriceBookEntry> out;
  for (const auto& r : tx.exec_prepared(kPriceBook.name))
    out.push_back({r["gpu_model"].as<std::string>(), r["price_micros"].as<std::int64_t>(), *TimeFrom(r["from_ms"])});
  return out;
}

std::optional<PriceBookEntry> NextPrice(pqxx::transaction_base& tx, const std::string& gpu_model, TimeMs now) {
  const auto r = gpu_model.empty() ? tx.exec_prepared(kNextStorage.name, FormatTime(now))
                                   : tx.exec_prepared(kNextOnDemand.name, gpu_model, FormatTime(now));
  if (r.empty()) return std::nullopt;
  return PriceBookEntry{gpu_model, r[0]["price_micros"].as<std::int64_t>(), *TimeFrom(r[0]["from_ms"])};
}

bool SchedulePrice(pqxx::transaction_base& tx, const PriceBookEntry& e) {
  const auto r = e.storage()
                     ? tx.exec_prepared(kInsertStorage.name, FormatTime(e.effective_from), e.price_micros)
                     : tx.exec_prepared(kInsertOnDemand.name, e.gpu_model, e.price_micros, FormatTime(e.effective_from));
  return r.affected_rows() == 1;
}

}  // namespace spillway
