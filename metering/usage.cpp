#include "metering/usage.hpp"

#include "core/db.hpp"
#include "core/log.hpp"
#include "core/sql.hpp"

namespace spillway::metering {
namespace {

// Each partition's day, from its name (usage_samples_YYYYMMDD).
const Statement kPartitions{"retention_partitions", R"sql(
SELECT c.relname AS name,
       )sql" SPW_EPOCH_MS("to_timestamp(substr(c.relname, 15), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC'") R"sql( AS day_ms
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'usage_samples'::regclass AND c.relname ~ '^usage_samples_[0-9]{8}$'
ORDER BY c.relname)sql"};
// A day's partition holds ts in [day, day + 24 h): samples of the hours from the one before the day
// (a sample ending at midnight) to its last, and of the month before when the day is a first. It
// goes once none of those hours is marked to refold and no tick with samples in it is unfolded.
const Statement kDroppable{"retention_droppable", R"sql(
SELECT NOT EXISTS (SELECT 1 FROM usage_dirty_hours
                   WHERE hour >= to_timestamp($1::bigint / 1000.0) - interval '1 hour'
                     AND hour < to_timestamp($1::bigint / 1000.0) + interval '24 hours')
   AND NOT EXISTS (SELECT 1 FROM ingest_ticks
                   WHERE last_ts >= to_timestamp($1::bigint / 1000.0)
                     AND first_ts < to_timestamp($1::bigint / 1000.0) + interval '24 hours')
   AND EXISTS (SELECT 1 FROM billing_periods_closed WHERE period = $2)
   AND EXISTS (SELECT 1 FROM billing_periods_closed WHERE period = $3) AS ok)sql"};
const Statement kDropPartition{"retention_drop_partition", "SELECT usage_samples_drop_partition($1) AS dropped"};
const Statement kRollupHealth{"rollup_health", R"sql(
SELECT coalesce(extract(epoch FROM to_timestamp($1::bigint / 1000.0) - least(
           (SELECT min(marked_at) FROM usage_dirty_hours), (SELECT min(started_at) FROM ingest_ticks),
           (SELECT min(queued_at) FROM rating_price_changes))), 0) AS lag_s,
       (SELECT sum(u.gpu_ms) FROM usage_hourly u WHERE u.hour >= to_timestamp($1::bigint / 1000.0) - interval '24 hours')
         AS metered,
       (SELECT sum(i.gpus::bigint * greatest(0, extract(epoch FROM
                 least(coalesce(i.ended_at, to_timestamp($1::bigint / 1000.0)), w.folded_through)
                 - greatest(i.started_at, date_trunc('hour', to_timestamp($1::bigint / 1000.0) - interval '24 hours'))) * 1000))
        FROM instances i JOIN host_watermarks w ON w.host_id = i.host_id
        WHERE i.started_at IS NOT NULL AND w.folded_through IS NOT NULL
          AND (i.ended_at IS NULL OR i.ended_at > to_timestamp($1::bigint / 1000.0) - interval '24 hours'))::bigint
         AS running)sql"};
// The window's bounds are $3 and $4 (timestamptz text); $5 'hour' or 'day'.
const Statement kTenantUsageRows{"usage_tenant_rows", R"sql(
SELECT instance_id, )sql" SPW_EPOCH_MS("date_trunc($5, hour)") R"sql( AS period_ms, sum(gpu_ms)::bigint AS gpu_ms,
       sum(samples)::bigint AS samples, sum(util_pct_mean * gpu_ms) / nullif(sum(gpu_ms), 0) AS util,
       sum(energy_mj)::bigint AS energy_mj, max(mem_peak_bytes) AS mem_peak
FROM usage_hourly
WHERE tenant_id = $1 AND ($2 = '' OR instance_id = $2) AND hour >= $3::timestamptz AND hour < $4::timestamptz
GROUP BY instance_id, date_trunc($5, hour) ORDER BY 2, 1)sql"};
// Held time is measured in milliseconds rounded as ingest reads the holds (SPW_EPOCH_MS), up to
// the later of the host's complete_through and the end of the instance's latest metered sample in
// the window: every metered millisecond lies inside a hold and before that, so metered <= held.
const Statement kTenantInstances{"usage_tenant_instances", R"sql(
SELECT i.id, )sql" SPW_EPOCH_MS("w.folded_through") R"sql( AS through_ms,
       (i.gpus::bigint * greatest(0, extract(epoch FROM
          least(coalesce(i.ended_at, $5::timestamptz), $4::timestamptz, coalesce(w.folded_through, $3::timestamptz))
          - greatest(i.started_at, $3::timestamptz)) * 1000))::bigint AS running_gpu_ms,
       coalesce(u.metered, 0)::bigint AS metered_gpu_ms,
       coalesce((SELECT sum(greatest(0,
                   least()sql" SPW_EPOCH_MS("coalesce(h.released_at, now())") R"sql(, )sql" SPW_EPOCH_MS("$4::timestamptz") R"sql(,
                         greatest()sql" SPW_EPOCH_MS("w.folded_through") R"sql(, )sql" SPW_EPOCH_MS("u.last_sample_at") R"sql())
                   - greatest()sql" SPW_EPOCH_MS("h.allocated_at") R"sql(, )sql" SPW_EPOCH_MS("$3::timestamptz") R"sql()))
                 FROM gpu_allocation_history h WHERE h.instance_id = i.id), 0)::bigint AS held_gpu_ms
FROM instances i LEFT JOIN host_watermarks w ON w.host_id = i.host_id
LEFT JOIN LATERAL (SELECT sum(gpu_ms) AS metered, max(last_sample_at) AS last_sample_at FROM usage_hourly
                   WHERE instance_id = i.id AND hour >= $3::timestamptz AND hour < $4::timestamptz) u ON true
WHERE i.tenant_id = $1 AND ($2 = '' OR i.id = $2) AND i.started_at IS NOT NULL AND i.started_at < $4::timestamptz
  AND (i.ended_at IS NULL OR i.ended_at > $3::timestamptz)
ORDER BY i.id)sql"};
// The invariant: per instance, its metered GPU-ms (every hour folded) against what its holds add
// up to, open ones up to now (ingest attributes nothing past the database's now of its commit).
const Statement kOverattributed{"metering_overattributed", R"sql(
SELECT u.instance_id, u.attributed_ms, coalesce(h.held_ms, 0)::bigint AS held_ms
FROM (SELECT instance_id, sum(gpu_ms)::bigint AS attributed_ms FROM usage_hourly
      WHERE instance_id IN (SELECT instance_id FROM usage_hourly WHERE hour >= to_timestamp($1::bigint / 1000.0))
      GROUP BY instance_id) u
LEFT JOIN LATERAL (
  SELECT sum()sql" SPW_EPOCH_MS("coalesce(released_at, now())") " - " SPW_EPOCH_MS("allocated_at") R"sql() AS held_ms
  FROM gpu_allocation_history WHERE instance_id = u.instance_id) h ON true
WHERE u.attributed_ms > coalesce(h.held_ms, 0)
ORDER BY u.instance_id)sql"};
const Statement kFleetUsage{"usage_fleet", R"sql(
SELECT region, gpu_model, )sql" SPW_EPOCH_MS("date_trunc($5, hour)") R"sql( AS period_ms,
       sum(allocated_gpu_ms)::bigint AS allocated, sum(idle_gpu_ms)::bigint AS idle, sum(samples)::bigint AS samples,
       sum(util_pct_mean * (allocated_gpu_ms + idle_gpu_ms)) / nullif(sum(allocated_gpu_ms + idle_gpu_ms), 0) AS util,
       sum(energy_mj)::bigint AS energy_mj
FROM pool_usage_hourly
WHERE hour >= $1::timestamptz AND hour < $2::timestamptz AND ($3 = '' OR region = $3) AND ($4 = '' OR gpu_model = $4)
GROUP BY region, gpu_model, date_trunc($5, hour) ORDER BY 3, 1, 2)sql"};

// Hosts with settled hours not yet judged, from the later of their mark and the hour of their first
// hold (a host new since the migration), up to 24 hours at a time; each hold overlapping each hour,
// clipped to it, against the instance-hour's metered GPU-ms.
#define SPW_HOUR_MS(t) "(extract(epoch FROM " t ") * 1000)::bigint"
const Statement kJudgeUnmetered{"metering_judge_unmetered", R"sql(
WITH due AS (
  SELECT w.host_id,
         coalesce(m.judged_through,
                  (SELECT date_trunc('hour', min(a.allocated_at)) FROM gpu_allocation_history a WHERE a.host_id = w.host_id),
                  date_trunc('hour', w.folded_through)) AS u,
         date_trunc('hour', w.folded_through) AS f
  FROM host_watermarks w LEFT JOIN unmetered_watermarks m ON m.host_id = w.host_id
  WHERE w.folded_through IS NOT NULL AND date_trunc('hour', w.folded_through) > coalesce(m.judged_through, '-infinity')
  ORDER BY w.host_id LIMIT $1),
span AS (SELECT host_id, u, least(f, u + interval '24 hours') AS through FROM due),
hours AS (SELECT s.host_id, h AS hour FROM span s, generate_series(s.u, s.through - interval '1 hour', interval '1 hour') AS h),
held AS (
  SELECT hr.hour, a.instance_id,
         sum()sql" SPW_HOUR_MS("least(coalesce(a.released_at, hr.hour + interval '1 hour'), hr.hour + interval '1 hour')")
    " - " SPW_HOUR_MS("greatest(a.allocated_at, hr.hour)") R"sql() AS held_ms
  FROM hours hr JOIN gpu_allocation_history a ON a.host_id = hr.host_id
   AND coalesce(a.released_at, 'infinity'::timestamptz) > hr.hour AND a.allocated_at < hr.hour + interval '1 hour'
  GROUP BY hr.hour, a.instance_id),
judged AS (
  SELECT h.hour, h.instance_id, i.tenant_id, i.region, i.gpu_model, i.market, h.held_ms,
         coalesce(u.gpu_ms, 0) AS metered_ms
  FROM held h JOIN instances i ON i.id = h.instance_id
  LEFT JOIN usage_hourly u ON u.hour = h.hour AND u.instance_id = h.instance_id
  WHERE h.held_ms > 0),
written AS (
  INSERT INTO unmetered_hourly (hour, instance_id, tenant_id, region, gpu_model, market, held_gpu_ms, metered_gpu_ms)
  SELECT hour, instance_id, tenant_id, region, gpu_model, market, held_ms, metered_ms FROM judged
  WHERE metered_ms < held_ms
  ON CONFLICT (hour, instance_id) DO NOTHING),
-- billing.unmetered_held_time = bill ($2): rated too, at the price in effect at the hour's start
-- (the on-demand book's, or the pool's spot price); usage_rated_hourly's triggers mark its month's
-- drafts.
rated AS (
  INSERT INTO usage_rated_hourly (hour, instance_id, tenant_id, market, price_micros_per_gpu_hour,
                                  list_price_micros_per_gpu_hour, gpu_ms, unmetered)
  SELECT j.hour, j.instance_id, j.tenant_id, j.market,
         CASE WHEN j.market = 'spot'
              THEN (SELECT s.price_micros_per_gpu_hour FROM spot_prices s WHERE s.region = j.region
                      AND s.gpu_model = j.gpu_model AND s.effective_from <= j.hour ORDER BY s.effective_from DESC LIMIT 1)
              ELSE (SELECT p.price_micros_per_gpu_hour FROM prices p WHERE p.gpu_model = j.gpu_model
                      AND p.market = 'on_demand' AND p.effective_from <= j.hour ORDER BY p.effective_from DESC LIMIT 1) END,
         (SELECT p.price_micros_per_gpu_hour FROM prices p WHERE p.gpu_model = j.gpu_model AND p.market = 'on_demand'
            AND p.effective_from <= j.hour ORDER BY p.effective_from DESC LIMIT 1),
         j.held_ms - j.metered_ms, true
  FROM judged j WHERE $2 AND j.metered_ms < j.held_ms),
marked AS (
  INSERT INTO unmetered_watermarks (host_id, judged_through) SELECT host_id, through FROM span
  ON CONFLICT (host_id) DO UPDATE SET judged_through = EXCLUDED.judged_through)
-- Every pool, judged or not, so that its counters have a series from the start.
SELECT p.region, p.gpu_model, coalesce(sum(j.held_ms), 0)::bigint AS held_ms,
       coalesce(sum(greatest(0, j.held_ms - j.metered_ms)), 0)::bigint AS unmetered_ms
FROM (SELECT region, gpu_model FROM pool_capacity UNION SELECT region, gpu_model FROM pool_capacity_changes
      UNION SELECT region, gpu_model FROM judged) p
LEFT JOIN judged j ON j.region = p.region AND j.gpu_model = p.gpu_model
GROUP BY p.region, p.gpu_model ORDER BY p.region, p.gpu_model)sql"};

}  // namespace

std::vector<UnmeteredJudged> JudgeUnmeteredHours(Session& conn, int max_hosts, bool bill) {
  return InTransaction(conn, [&](Tx& tx) {
    std::vector<UnmeteredJudged> out;
    for (const auto& r : tx.exec_prepared(kJudgeUnmetered.name, max_hosts, bill))
      out.push_back({r["region"].as<std::string>(), r["gpu_model"].as<std::string>(), r["held_ms"].as<std::int64_t>(),
                     r["unmetered_ms"].as<std::int64_t>()});
    return out;
  });
}

std::vector<std::string> DropExpiredPartitions(pqxx::connection& conn, TimeMs now, Millis retention) {
  constexpr std::int64_t kDayMs = 24LL * 3600 * 1000;
  std::vector<std::pair<std::string, std::int64_t>> old;
  {
    pqxx::read_transaction tx(conn, "retention_plan");
    for (const auto& r : tx.exec_prepared(kPartitions.name)) {
      const std::int64_t day = r["day_ms"].as<std::int64_t>();
      if (FromEpochMs(day + kDayMs) <= now - retention) old.emplace_back(r["name"].as<std::string>(), day);
    }
  }
  std::vector<std::string> dropped;
  for (const auto& [name, day] : old) {
    const bool done = InTransaction(conn, [&](Tx& tx) {
      if (!tx.exec_prepared1(kDroppable.name, day, MonthOf(FromEpochMs(day)).Label(),
                             MonthOf(FromEpochMs(day - 1)).Label())["ok"].as<bool>())
        return false;
      return tx.exec_prepared1(kDropPartition.name, name)["dropped"].as<bool>();
    });
    if (!done) continue;
    log::Info("usage samples dropped after retention: rolled up and invoiced", {{"partition", name}});
    dropped.push_back(name);
  }
  return dropped;
}

RollupHealth ReadRollupHealth(Tx& tx, TimeMs now) {
  const auto r = tx.exec_prepared1(kRollupHealth.name, EpochMs(now));
  RollupHealth h;
  h.lag_seconds = r["lag_s"].as<double>();
  if (!r["metered"].is_null() && !r["running"].is_null() && r["running"].as<std::int64_t>() > 0)
    h.coverage = r["metered"].as<double>() / r["running"].as<double>();
  return h;
}

UsageReport TenantUsage(Tx& tx, const UsageQuery& q, TimeMs now) {
  UsageReport out;
  const std::string from = FormatTime(q.from), to = FormatTime(q.to), unit = q.daily ? "day" : "hour";
  for (const auto& r : tx.exec_prepared(kTenantUsageRows.name, q.tenant_id, q.instance_id, from, to, unit))
    out.rows.push_back({r["instance_id"].as<std::string>(), *TimeFrom(r["period_ms"]), r["gpu_ms"].as<std::int64_t>(),
                        r["samples"].as<std::int64_t>(), r["energy_mj"].as<std::int64_t>(),
                        r["mem_peak"].as<std::int64_t>(), r["util"].is_null() ? 0.0 : r["util"].as<double>()});
  for (const auto& r :
       tx.exec_prepared(kTenantInstances.name, q.tenant_id, q.instance_id, from, to, FormatTime(now))) {
    InstanceUsage u{r["id"].as<std::string>(), r["metered_gpu_ms"].as<std::int64_t>(),
                    r["running_gpu_ms"].as<std::int64_t>(), TimeFrom(r["through_ms"]),
                    r["held_gpu_ms"].as<std::int64_t>()};
    out.instances.push_back(u);
  }
  // The oldest of the hosts' (none folded yet for one of them: nothing is known complete).
  bool unknown = false;
  for (const auto& u : out.instances) {
    if (!u.complete_through) unknown = true;
    else if (!out.complete_through || *u.complete_through < *out.complete_through) out.complete_through = u.complete_through;
  }
  if (unknown) out.complete_through.reset();
  return out;
}

std::vector<Overattribution> OverattributedInstances(Tx& tx, TimeMs since) {
  std::vector<Overattribution> out;
  for (const auto& r : tx.exec_prepared(kOverattributed.name, EpochMs(since)))
    out.push_back({r["instance_id"].as<std::string>(), r["attributed_ms"].as<std::int64_t>(),
                   r["held_ms"].as<std::int64_t>()});
  return out;
}

std::vector<PoolUsageRow> FleetUsage(Tx& tx, TimeMs from, TimeMs to, const std::string& region,
                                     const std::string& gpu_model, bool daily) {
  std::vector<PoolUsageRow> out;
  for (const auto& r : tx.exec_prepared(kFleetUsage.name, FormatTime(from), FormatTime(to), region, gpu_model,
                                        daily ? "day" : "hour"))
    out.push_back({r["region"].as<std::string>(), r["gpu_model"].as<std::string>(), *TimeFrom(r["period_ms"]),
                   r["allocated"].as<std::int64_t>(), r["idle"].as<std::int64_t>(), r["samples"].as<std::int64_t>(),
                   r["energy_mj"].as<std::int64_t>(), r["util"].is_null() ? 0.0 : r["util"].as<double>()});
  return out;
}

}  // namespace spillway::metering
