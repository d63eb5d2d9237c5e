#pragma once
// Rating's SQL, which the metering fold composes into its pass (metering/fold.cpp): billing owns what
// a GPU-millisecond costs (the price spans) and the rated rows it writes; the fold owns the samples
// and when they are added. (Migration 0030's triggers on usage_rated_hourly keep the month sums and
// mark the tenant-months for their drafts, whoever writes the rows.)

namespace spillway::billing {

// The price in effect for each attributed sample at its ts (effective_from <= ts): the on-demand
// book's for on-demand instances, the pool's spot history for spot ones; and beside it the list
// price, the on-demand book's at that ts for both (a spot row's saving is list - price). Each
// price's span is [effective_from, the next one's): the spans that reach into the samples' time are
// the one in effect at their first (one index probe per model or pool) and those that begin up to
// their last. CTEs over `att` (ts, market, region, gpu_model per sample), giving `spans` (market,
// region, gpu_model, price, from_ts, to_ts) and `list_spans` (gpu_model, price, from_ts, to_ts).
inline constexpr const char* kPriceSpansSql = R"sql(
used AS (SELECT market, region, gpu_model, min(ts) AS lo, max(ts) AS hi FROM att GROUP BY market, region, gpu_model),
models AS (SELECT gpu_model, min(lo) AS lo, max(hi) AS hi FROM used GROUP BY gpu_model),
list_points AS (
  SELECT m.gpu_model, p.price, p.from_ts FROM models m,
  LATERAL (SELECT price_micros_per_gpu_hour AS price, effective_from AS from_ts FROM prices
           WHERE gpu_model = m.gpu_model AND market = 'on_demand' AND effective_from <= m.lo
           ORDER BY effective_from DESC LIMIT 1) p
  UNION ALL
  SELECT m.gpu_model, p.price_micros_per_gpu_hour, p.effective_from FROM models m JOIN prices p
    ON p.gpu_model = m.gpu_model AND p.market = 'on_demand' AND p.effective_from > m.lo AND p.effective_from <= m.hi),
list_spans AS (
  SELECT gpu_model, price, from_ts,
         coalesce(lead(from_ts) OVER (PARTITION BY gpu_model ORDER BY from_ts), 'infinity') AS to_ts
  FROM list_points),
points AS (
  SELECT u.market, u.region, u.gpu_model, l.price, l.from_ts FROM used u JOIN list_points l ON l.gpu_model = u.gpu_model
  WHERE u.market = 'on_demand'
  UNION ALL
  SELECT u.market, u.region, u.gpu_model, p.price, p.from_ts FROM used u,
  LATERAL (SELECT price_micros_per_gpu_hour AS price, effective_from AS from_ts FROM spot_prices
           WHERE u.market = 'spot' AND region = u.region AND gpu_model = u.gpu_model AND effective_from <= u.lo
           ORDER BY effective_from DESC LIMIT 1) p
  UNION ALL
  SELECT u.market, u.region, u.gpu_model, p.price_micros_per_gpu_hour, p.effective_from FROM used u JOIN spot_prices p
    ON u.market = 'spot' AND p.region = u.region AND p.gpu_model = u.gpu_model
   AND p.effective_from > u.lo AND p.effective_from <= u.hi),
spans AS (
  SELECT market, region, gpu_model, price, from_ts,
         coalesce(lead(from_ts) OVER (PARTITION BY market, region, gpu_model ORDER BY from_ts), 'infinity') AS to_ts
  FROM points))sql";

// The rated rows of `groups` (hour, instance_id, tenant_id, market, price, list_price, gpu_ms per
// hour, instance and price pair), added to the instance-hour's row for the same prices: a CTE.
inline constexpr const char* kAddRatedSql = R"sql(
rated AS (
  INSERT INTO usage_rated_hourly AS r (hour, instance_id, tenant_id, market, price_micros_per_gpu_hour,
                                       list_price_micros_per_gpu_hour, gpu_ms)
  SELECT hour, instance_id, tenant_id, market, price, list_price, gpu_ms FROM groups
  ON CONFLICT (hour, instance_id, price_micros_per_gpu_hour, list_price_micros_per_gpu_hour, unmetered)
  DO UPDATE SET gpu_ms = r.gpu_ms + EXCLUDED.gpu_ms))sql";

}  // namespace spillway::billing
