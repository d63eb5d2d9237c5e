#include "metering/fold.hpp"

#include <map>
#include <string>
#include <vector>

#include "billing/rating_sql.hpp"
#include "core/db.hpp"
#include "core/log.hpp"
#include "core/sql.hpp"

namespace spillway::metering {
namespace {

// The hour a sample is in: the one that holds its last millisecond (ingest cut samples at the turns
// of hours), ts in (hour, hour + 1 h].
#define SPW_HOUR_OF(ts) "date_trunc('hour', " ts " - interval '1 microsecond')"
// A stored sample already in the rollups: stored before ticks, or its tick taken by a fold.
#define SPW_FOLDED(s) "(" s ".tick IS NULL OR NOT EXISTS (SELECT 1 FROM ingest_ticks t WHERE t.tick = " s ".tick))"
#define SPW_SAMPLE_COLUMNS "s.ts, s.host_id, s.instance_id, s.interval_ms, s.util_pct, s.mem_used_bytes, s.energy_mj"
// The samples a statement folds (the CTE `src`): a pass's ticks ($1..$2, $3 the ticks), an hour
// marked to refold ($1, its start in ms), or some instances' hour ($1, $2 their ids); the last two
// read only what is folded already, so that a tick not taken yet is added once, when it is.
#define SPW_SRC_TICKS                                                                      \
  "SELECT " SPW_SAMPLE_COLUMNS " FROM usage_samples s "                                    \
  "WHERE s.tick BETWEEN $1::bigint AND $2::bigint AND s.tick = ANY($3::bigint[])"
#define SPW_IN_HOUR(ts) "(" ts " > " SPW_TS(1) " AND " ts " <= " SPW_TS(1) " + interval '1 hour')"
#define SPW_SRC_HOUR \
  "SELECT " SPW_SAMPLE_COLUMNS " FROM usage_samples s WHERE " SPW_IN_HOUR("s.ts") " AND " SPW_FOLDED("s")
#define SPW_SRC_INSTANCE_HOUR                                                                             \
  "SELECT " SPW_SAMPLE_COLUMNS " FROM usage_samples s WHERE " SPW_IN_HOUR("s.ts") " AND " SPW_FOLDED("s") \
  " AND s.instance_id = ANY($2::text[])"

// Each attributed sample (`att`) with its prices (billing's spans, billing/rating_sql.hpp); `groups`
// is the samples once aggregated per hour, instance and price pair, with every measure the rollups
// keep: the instance-hours and the rated rows are both sums of it.
const std::string kGroups = std::string(R"sql(
att AS (SELECT s.ts, s.instance_id, s.interval_ms, s.util_pct, s.mem_used_bytes, s.energy_mj,
               i.tenant_id, i.market, i.region, i.gpu_model
        FROM src s JOIN instances i ON i.id = s.instance_id),
)sql") + billing::kPriceSpansSql + R"sql(,
groups AS MATERIALIZED (
  SELECT )sql" SPW_HOUR_OF("a.ts") R"sql( AS hour, a.instance_id, a.tenant_id, a.market, sp.price, ls.price AS list_price,
         sum(a.interval_ms) AS gpu_ms, count(*) AS samples, sum(a.util_pct::bigint * a.interval_ms) AS util_pct_ms,
         sum(a.energy_mj) AS energy_mj, max(a.mem_used_bytes) AS mem_peak_bytes, max(a.ts) AS last_sample_at
  FROM att a
  LEFT JOIN spans sp ON sp.market = a.market AND sp.region = a.region AND sp.gpu_model = a.gpu_model
                    AND a.ts >= sp.from_ts AND a.ts < sp.to_ts
  LEFT JOIN list_spans ls ON ls.gpu_model = a.gpu_model AND a.ts >= ls.from_ts AND a.ts < ls.to_ts
  GROUP BY 1, a.instance_id, a.tenant_id, a.market, sp.price, ls.price))sql";
// Per instance and hour: GPU-ms, samples, utilisation as an exact sum (its mean that over the
// time), energy, the highest memory use and the last sample's end. Added to the hour's row.
const char* const kAddInstanceHours = R"sql(
inst AS (
  INSERT INTO usage_hourly AS u (hour, instance_id, tenant_id, gpu_ms, samples, util_pct_ms, util_pct_mean, energy_mj,
                                 mem_peak_bytes, last_sample_at)
  SELECT hour, instance_id, tenant_id, sum(gpu_ms), sum(samples), sum(util_pct_ms),
         sum(util_pct_ms)::double precision / sum(gpu_ms), sum(energy_mj), max(mem_peak_bytes), max(last_sample_at)
  FROM groups GROUP BY hour, instance_id, tenant_id
  ON CONFLICT (hour, instance_id) DO UPDATE SET
    gpu_ms = u.gpu_ms + EXCLUDED.gpu_ms, samples = u.samples + EXCLUDED.samples,
    util_pct_ms = u.util_pct_ms + EXCLUDED.util_pct_ms,
    util_pct_mean = (u.util_pct_ms + EXCLUDED.util_pct_ms)::double precision / (u.gpu_ms + EXCLUDED.gpu_ms),
    energy_mj = u.energy_mj + EXCLUDED.energy_mj, mem_peak_bytes = greatest(u.mem_peak_bytes, EXCLUDED.mem_peak_bytes),
    last_sample_at = greatest(u.last_sample_at, EXCLUDED.last_sample_at)))sql";
// Per pool and hour: GPU-ms held by instances and idle (what the spot market sells).
const char* const kAddPoolHours = R"sql(
pool AS (
  INSERT INTO pool_usage_hourly AS p (hour, region, gpu_model, allocated_gpu_ms, idle_gpu_ms, samples, util_pct_ms,
                                      util_pct_mean, energy_mj)
  SELECT )sql" SPW_HOUR_OF("s.ts") R"sql(, h.region, h.gpu_model,
         coalesce(sum(s.interval_ms) FILTER (WHERE s.instance_id IS NOT NULL), 0),
         coalesce(sum(s.interval_ms) FILTER (WHERE s.instance_id IS NULL), 0), count(*),
         sum(s.util_pct::bigint * s.interval_ms), sum(s.util_pct::bigint * s.interval_ms)::double precision / sum(s.interval_ms),
         sum(s.energy_mj)
  FROM src s JOIN hosts h ON h.id = s.host_id
  GROUP BY 1, h.region, h.gpu_model
  ON CONFLICT (hour, region, gpu_model) DO UPDATE SET
    allocated_gpu_ms = p.allocated_gpu_ms + EXCLUDED.allocated_gpu_ms, idle_gpu_ms = p.idle_gpu_ms + EXCLUDED.idle_gpu_ms,
    samples = p.samples + EXCLUDED.samples, util_pct_ms = p.util_pct_ms + EXCLUDED.util_pct_ms,
    util_pct_mean = (p.util_pct_ms + EXCLUDED.util_pct_ms)::double precision
                    / (p.allocated_gpu_ms + p.idle_gpu_ms + EXCLUDED.allocated_gpu_ms + EXCLUDED.idle_gpu_ms),
    energy_mj = p.energy_mj + EXCLUDED.energy_mj))sql";
// The rated rows, as billing writes them (the tenant-months changed are marked for their drafts by
// usage_rated_hourly's triggers, which keep the month sums: migration 0030).
const char* const kAddRated = billing::kAddRatedSql;
std::string Fold(const char* src) {
  return std::string("WITH src AS MATERIALIZED (") + src + "), " + kGroups + ", " + kAddInstanceHours + ", " +
         kAddPoolHours + ", " + kAddRated + "\nSELECT 1";
}

const Statement kTakeDirtyHours{"fold_take_dirty_hours", R"sql(
DELETE FROM usage_dirty_hours WHERE hour IN (SELECT hour FROM usage_dirty_hours ORDER BY hour LIMIT $1)
RETURNING )sql" SPW_EPOCH_MS("hour") " AS hour_ms"};
const Statement kClearHour{"fold_clear_hour", R"sql(
WITH inst AS (DELETE FROM usage_hourly WHERE hour = )sql" SPW_TS(1) R"sql(),
pool AS (DELETE FROM pool_usage_hourly WHERE hour = )sql" SPW_TS(1) R"sql(),
gone AS (DELETE FROM usage_rated_hourly WHERE hour = )sql" SPW_TS(1) R"sql( AND NOT unmetered)
SELECT 1)sql"};
const std::string kFoldHourSql = Fold(SPW_SRC_HOUR);
const Statement kFoldHour{"fold_hour", kFoldHourSql.c_str()};

// Queued price changes, taken; the instance-hours whose folded samples reach past one: an hour
// that ends at or after it, whose last sample does, of an instance the price applies to.
const Statement kTakePriceChanges{"fold_take_price_changes", R"sql(
WITH q AS (DELETE FROM rating_price_changes RETURNING market, region, gpu_model, effective_from)
SELECT DISTINCT )sql" SPW_EPOCH_MS("u.hour") R"sql( AS hour_ms, u.instance_id
FROM q JOIN usage_hourly u ON u.hour >= q.effective_from - interval '1 hour' AND u.last_sample_at >= q.effective_from
JOIN instances i ON i.id = u.instance_id AND i.gpu_model = q.gpu_model
 AND (q.market = 'on_demand' OR (i.market = 'spot' AND i.region = q.region))
ORDER BY 1, 2)sql"};
const Statement kClearRated{"fold_clear_rated", R"sql(
DELETE FROM usage_rated_hourly WHERE hour = )sql" SPW_TS(1) R"sql( AND instance_id = ANY($2::text[]) AND NOT unmetered)sql"};
const std::string kRerateSql = std::string("WITH src AS MATERIALIZED (" SPW_SRC_INSTANCE_HOUR "), ") + kGroups + ", " +
                               kAddRated + "\nSELECT 1";
const Statement kRerate{"fold_rerate", kRerateSql.c_str()};

// Ticks in commit-independent order: a tick not committed yet is not seen, and is taken later.
// (The ticks to take are read once, not per row: ingest_ticks' index holds every deleted tick
// until it is vacuumed.)
const Statement kTakeTicks{"fold_take_ticks", R"sql(
WITH taken AS (DELETE FROM ingest_ticks WHERE tick = ANY(ARRAY(SELECT tick FROM ingest_ticks ORDER BY tick LIMIT $1))
               RETURNING tick)
SELECT count(*) AS n, coalesce(min(tick), 0) AS lo, coalesce(max(tick), 0) AS hi,
       coalesce(array_agg(tick), '{}')::text AS ticks FROM taken)sql"};
const std::string kFoldTicksSql = Fold(SPW_SRC_TICKS);
const Statement kFoldTicks{"fold_ticks", kFoldTicksSql.c_str()};
// The tick index's ranges not yet summarized, in the partitions the unfolded ticks wrote to: a BRIN
// scan reads every unsummarized range, and autovacuum summarizes them only on its rounds, so a pass
// would read the table's tail since then. Summarized here, its cost is that of the new pages.
const Statement kSummarizeTicks{"fold_summarize_ticks", R"sql(
SELECT coalesce(sum(brin_summarize_new_values(i.indexrelid)), 0)::bigint AS ranges
FROM (SELECT 'usage_samples_' || to_char(min(first_ts) AT TIME ZONE 'UTC', 'YYYYMMDD') AS lo,
             'usage_samples_' || to_char(max(last_ts) AT TIME ZONE 'UTC', 'YYYYMMDD') AS hi FROM ingest_ticks) t
JOIN pg_inherits part ON part.inhparent = 'usage_samples'::regclass
JOIN pg_class p ON p.oid = part.inhrelid AND p.relname BETWEEN t.lo AND t.hi
JOIN pg_index i ON i.indrelid = p.oid
JOIN pg_inherits idx ON idx.inhrelid = i.indexrelid AND idx.inhparent = 'usage_samples_tick'::regclass)sql"};
// The planner never has statistics for the newest ticks (they lie past the histogram of the last
// analyze), so it guesses a pass's samples are a handful and joins them to instances and hosts by
// index lookups, one per sample: 4x slower than hashing at 240,000 samples. A pass is bulk work:
// no nested loops; and no JIT, whose compiling (about 1 s) the disabled joins' costs would trigger.
const Statement kBulkJoins{"fold_bulk_joins", "SELECT set_config('enable_nestloop', 'off', true), set_config('jit', 'off', true)"};
const Statement kIndexJoins{"fold_index_joins", "SELECT set_config('enable_nestloop', 'on', true)"};
// Summarizing takes the lock VACUUM takes: behind a vacuum of the partition, the pass goes on without.
const Statement kSummarizeLockTimeout{"fold_summarize_lock_timeout", "SET LOCAL lock_timeout = '100ms'"};

const Statement kWatermarksNow{"fold_watermarks_now",
                               "SELECT host_id, " SPW_EPOCH_MS("sampled_through") " AS through_ms FROM host_watermarks"};
// Ingest upserts host_watermarks rows in its own transactions: rows it holds now are skipped
// (moved by the next pass), so the fold never waits on ingest and no lock cycle can form.
const Statement kSetFolded{"fold_set_folded", R"sql(
WITH q AS (SELECT host_id, to_timestamp(through_ms / 1000.0) AS through
           FROM unnest($1::text[], $2::bigint[]) AS q (host_id, through_ms)),
locked AS (SELECT w.host_id FROM host_watermarks w JOIN q ON q.host_id = w.host_id
           WHERE w.folded_through IS NULL OR w.folded_through < q.through
           FOR UPDATE OF w SKIP LOCKED)
UPDATE host_watermarks w SET folded_through = greatest(w.folded_through, q.through)
FROM q JOIN locked l ON l.host_id = q.host_id WHERE w.host_id = q.host_id)sql"};

const Statement kMarkEveryHour{"fold_mark_every_hour", R"sql(
INSERT INTO usage_dirty_hours (hour, marked_at)
SELECT hour, now() FROM (SELECT hour FROM usage_hourly UNION SELECT hour FROM pool_usage_hourly
                         UNION SELECT hour FROM usage_rated_hourly
                         UNION SELECT )sql" SPW_HOUR_OF("ts") R"sql( FROM usage_samples) h
ON CONFLICT (hour) DO NOTHING)sql"};

}  // namespace

FoldPass FoldUsage(Session& conn, const FoldLimits& limits) {
  FoldPass pass;
  std::vector<std::string> hosts;
  std::vector<std::int64_t> through;
  {
    // Watermarks first: every sample at or before them has committed, and its tick is either
    // folded or in ingest_ticks now; if this pass takes all of those, they are all folded.
    pqxx::read_transaction tx(conn, "fold_plan");
    for (const auto& r : tx.exec_prepared(kWatermarksNow.name)) {
      hosts.push_back(r["host_id"].as<std::string>());
      through.push_back(r["through_ms"].as<std::int64_t>());
    }
  }
  bool left = false;
  // Marked hours and price changes first, each refold reading only samples already folded; then
  // ticks, added on top. A tick taken meanwhile by nobody else is added once either way.
  InTransaction(conn, [&](Tx& tx) {
    pass.hours_refolded = 0;
    pass.instance_hours_rerated = 0;
    tx.exec_prepared(kBulkJoins.name);
    for (const auto& r : tx.exec_prepared(kTakeDirtyHours.name, limits.max_hours)) {
      const std::int64_t hour = r["hour_ms"].as<std::int64_t>();
      tx.exec_prepared(kClearHour.name, hour);
      tx.exec_prepared(kFoldHour.name, hour);
      ++pass.hours_refolded;
    }
    left = pass.hours_refolded == limits.max_hours;  // perhaps more
    std::map<std::int64_t, std::vector<std::string>> rerate;
    tx.exec_prepared(kIndexJoins.name);  // a few changes against the hour's rows: index probes
    for (const auto& r : tx.exec_prepared(kTakePriceChanges.name))
      rerate[r["hour_ms"].as<std::int64_t>()].push_back(r["instance_id"].as<std::string>());
    tx.exec_prepared(kBulkJoins.name);
    for (const auto& [hour, instances] : rerate) {
      const std::string ids = TextArrayLiteral(instances);
      tx.exec_prepared(kClearRated.name, hour, ids);
      tx.exec_prepared(kRerate.name, hour, ids);
      pass.instance_hours_rerated += static_cast<int>(instances.size());
    }
  });
  try {
    InTransaction(conn, [&](Tx& tx) {
      tx.exec_prepared(kSummarizeLockTimeout.name);
      tx.exec_prepared(kSummarizeTicks.name);
    }, 1);
  } catch (const std::exception& e) {
    log::Debug("tick index not summarized before the fold (a vacuum holds it)", {{"error", e.what()}});
  }
  for (int chunk = 0;; ++chunk) {
    if (chunk == limits.max_chunks) {
      left = true;
      break;
    }
    const std::int64_t n = InTransaction(conn, [&](Tx& tx) {
      tx.exec_prepared(kBulkJoins.name);
      const auto t = tx.exec_prepared1(kTakeTicks.name, limits.max_ticks);
      const std::int64_t taken = t["n"].as<std::int64_t>();
      if (taken > 0)
        tx.exec_prepared(kFoldTicks.name, t["lo"].as<std::int64_t>(), t["hi"].as<std::int64_t>(),
                         t["ticks"].as<std::string>());
      return taken;
    });
    pass.ticks += n;
    if (n < limits.max_ticks) break;
  }
  pass.caught_up = !left;
  if (pass.caught_up && !hosts.empty())
    InTransaction(conn, [&](Tx& tx) {
      tx.exec_prepared(kSetFolded.name, TextArrayLiteral(hosts), Int64ArrayLiteral(through));
    });
  return pass;
}

void MarkEveryHourToRefold(Tx& tx) { tx.exec_prepared(kMarkEveryHour.name); }

}  // namespace spillway::metering
