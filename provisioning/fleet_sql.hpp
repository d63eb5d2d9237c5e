#pragma once
// The fleet's statements and the helpers its files share (pools, placement, locking, instance ends,
// spot pricing, silence, gauges): internal to provisioning/, never included by handlers.
#include <pqxx/pqxx>

#include <string>

#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/sql.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/words.hpp"

namespace spillway::fleet_sql {

#define SPW_POOL_HOST_COLUMNS                                                                          \
  "id, gpu_count, state, health, coalesce(cuda_version, '') AS cuda_version, "                         \
  "coalesce(port_range_to - port_range_from + 1, 0) - (SELECT count(*) FROM instance_ports p "        \
  "WHERE p.host_id = hosts.id AND p.released_at IS NULL) AS free_ports "
inline const Statement kPoolHostsLocked{"pool_hosts_locked",
                                 "SELECT " SPW_POOL_HOST_COLUMNS "FROM hosts "
                                 "WHERE region = $1 AND gpu_model = $2 ORDER BY id FOR UPDATE"};
inline const Statement kPoolHosts{"pool_hosts",
                           "SELECT " SPW_POOL_HOST_COLUMNS "FROM hosts "
                           "WHERE region = $1 AND gpu_model = $2 ORDER BY id"};
inline const Statement kPoolFreeGpus{"pool_free_gpus", R"sql(
SELECT g.host_id, g.gpu_index FROM gpus g JOIN hosts h ON h.id = g.host_id
WHERE h.region = $1 AND h.gpu_model = $2
  AND NOT EXISTS (SELECT 1 FROM gpu_allocations a WHERE a.host_id = g.host_id AND a.gpu_index = g.gpu_index)
ORDER BY g.host_id, g.gpu_index)sql"};
inline const Statement kPoolLiveInstances{"pool_live_instances", R"sql(
SELECT id, host_id, gpus, market, state, max_price_micros FROM instances
WHERE region = $1 AND gpu_model = $2 AND instance_is_live(state)
ORDER BY max_price_micros ASC NULLS LAST, created_at DESC, id DESC)sql"};
inline const Statement kPoolReserved{"pool_reserved",
                              "SELECT internal_reserved_gpus FROM pool_reservations WHERE region = $1 AND gpu_model = $2"};
// The pool's own lock (the lock order: after the tenant row, before any host): every change to the
// pool's allocations, reservation or spot price holds it, so placement needs no host locked but the
// one it chooses.
inline const Statement kLockPool{"lock_pool",
                          "SELECT pg_advisory_xact_lock(hashtextextended('pool' || chr(10) || $1 || chr(10) || $2, 0))"};
// A pool's counts, as LoadPool adds them up from its rows, without a pass over the pool's hosts:
// the total is kept as hosts change (pool_capacity plus the changes not yet folded, in one
// snapshot: migrations/0025_keep_pool_capacity.sql), the largest host is an index's last entry,
// and only draining hosts and live instances are read.
// Run planned for each call (exec_params): the changes table is empty most of the time and holds
// thousands of rows during a registration storm.
inline const Statement kPoolCounts{"pool_counts", R"sql(
WITH i AS (
  SELECT coalesce(sum(gpus) FILTER (WHERE market = 'on_demand'), 0) AS on_demand,
         coalesce(sum(gpus) FILTER (WHERE market <> 'on_demand' AND state = 'preempting'), 0) AS spot_leaving,
         coalesce(sum(gpus) FILTER (WHERE market <> 'on_demand' AND state <> 'preempting'), 0) AS spot_active
  FROM instances WHERE region = $1 AND gpu_model = $2 AND instance_is_live(state))
SELECT coalesce((SELECT up_gpus FROM pool_capacity WHERE region = $1 AND gpu_model = $2), 0)
         + coalesce((SELECT sum(up_gpus) FROM pool_capacity_changes WHERE region = $1 AND gpu_model = $2), 0)::bigint
         AS total,
       coalesce((SELECT max(gpu_count) FROM hosts WHERE region = $1 AND gpu_model = $2), 0) AS largest_host,
       i.on_demand, i.spot_leaving, i.spot_active,
       (SELECT count(*) FROM gpus g JOIN hosts d ON d.id = g.host_id
        WHERE d.region = $1 AND d.gpu_model = $2 AND d.state = 'draining' AND d.health = 'up'
          AND NOT EXISTS (SELECT 1 FROM gpu_allocations a WHERE a.host_id = g.host_id AND a.gpu_index = g.gpu_index))
         AS draining_idle,
       coalesce((SELECT internal_reserved_gpus FROM pool_reservations WHERE region = $1 AND gpu_model = $2), 0) AS reserved
FROM i)sql"};
// The fold: the changes it can see move into pool_capacity, in one transaction. A change committed
// meanwhile stays for the next fold; a reader sees each change once, folded or not. The leader runs
// it every tick and every replica's heartbeat writer every few seconds (so the changes stay few with
// no leader); changes another fold holds are skipped, never waited on, and pools are written in
// one order, so two folds at once cannot deadlock.
inline const Statement kFoldPoolCapacity{"fold_pool_capacity", R"sql(
WITH moved AS (DELETE FROM pool_capacity_changes
               WHERE ctid IN (SELECT ctid FROM pool_capacity_changes FOR UPDATE SKIP LOCKED)
               RETURNING region, gpu_model, up_gpus)
INSERT INTO pool_capacity AS c (region, gpu_model, up_gpus)
SELECT region, gpu_model, sum(up_gpus) FROM moved GROUP BY region, gpu_model ORDER BY region, gpu_model
ON CONFLICT (region, gpu_model) DO UPDATE SET up_gpus = c.up_gpus + EXCLUDED.up_gpus)sql"};
// A pool's hosts for PoolView: placeable or not, effectively free GPUs (a host's GPUs are its
// gpu_count GPU rows, so free is gpu_count less its allocations, less what pending instances were
// promised) and GPUs held by spot, counted per distinct (placeable, free, reclaimable).
inline const Statement kPoolView{"pool_view", R"sql(
WITH used AS (SELECT a.host_id, count(*) AS n FROM gpu_allocations a JOIN hosts x ON x.id = a.host_id
              WHERE x.region = $1 AND x.gpu_model = $2 GROUP BY a.host_id),
     held AS (SELECT host_id,
                     coalesce(sum(gpus) FILTER (WHERE state = 'pending'), 0) AS claimed,
                     coalesce(sum(gpus) FILTER (WHERE market <> 'on_demand'), 0) AS spot
              FROM instances
              WHERE region = $1 AND gpu_model = $2 AND instance_is_live(state) AND host_id IS NOT NULL
              GROUP BY host_id)
SELECT h.state = 'active' AND h.health = 'up' AS placeable,
       greatest(0, h.gpu_count - coalesce(u.n, 0) - coalesce(c.claimed, 0)) AS free,
       coalesce(c.spot, 0) AS reclaimable, count(*) AS hosts
FROM hosts h LEFT JOIN used u ON u.host_id = h.id LEFT JOIN held c ON c.host_id = h.id
WHERE h.region = $1 AND h.gpu_model = $2
GROUP BY 1, 2, 3)sql"};
// Best fit in SQL: the placeable host with the fewest effectively free GPUs (free, less those promised
// to pending instances) that still holds $3 of them, $4 ports to map and CUDA ≥ $5 (when given);
// the lowest id among equals, as PlanPlacement chooses. A host's GPUs are its gpu_count GPU rows.
// It reads what is on hosts, not every host of the pool:
// - `touched`: every host something is on (GPU allocations, pending instances' claims in this pool,
//   mapped ports), one row each; each is looked up by id and weighed;
// - the rest have all their GPUs and ports free: the pool's index of placeable hosts
//   (hosts_placeable, by GPU count then id) gives the smallest that fits first.
// Its shape does not lean on the planner's row estimates, which lag a registration storm (at 10,000
// hosts the statistics still said one host): `touched` is one aggregate, and the lookup by id is a
// LATERAL subquery kept apart (OFFSET 0), so it stays a probe of the primary key per touched host.
// Run planned for each call (exec_params), so that no plan made while the pool was small is kept.
// At 10,000 hosts under the fleet's load, the whole-pool form took 130–170 ms a launch.
inline const Statement kBestFitHost{"pool_best_fit_host", R"sql(
WITH touched AS (
  SELECT host_id, sum(used) AS used, sum(claimed) AS claimed, sum(mapped) AS mapped
  FROM (SELECT host_id, 1 AS used, 0 AS claimed, 0 AS mapped FROM gpu_allocations
        UNION ALL
        SELECT host_id, 0, gpus, 0 FROM instances
        WHERE region = $1 AND gpu_model = $2 AND state = 'pending' AND host_id IS NOT NULL
        UNION ALL
        SELECT host_id, 0, 0, 1 FROM instance_ports WHERE released_at IS NULL AND host_id IS NOT NULL) s
  GROUP BY host_id),
fits AS (
  (SELECT h.id, h.gpu_count - t.used - t.claimed AS free
   FROM touched t
     CROSS JOIN LATERAL (SELECT x.id, x.gpu_count, x.port_range_from, x.port_range_to, x.cuda_version
                         FROM hosts x
                         WHERE x.id = t.host_id AND x.region = $1 AND x.gpu_model = $2
                           AND x.state = 'active' AND x.health = 'up'
                         OFFSET 0) h
   WHERE h.gpu_count - t.used - t.claimed >= $3
     AND coalesce(h.port_range_to - h.port_range_from + 1, 0) - t.mapped >= $4
     AND ($5::text IS NULL OR string_to_array(h.cuda_version, '.')::int[] >= string_to_array($5::text, '.')::int[])
   ORDER BY 2, 1 LIMIT 1)
  UNION ALL
  (SELECT h.id, h.gpu_count AS free FROM hosts h
   WHERE h.region = $1 AND h.gpu_model = $2 AND h.state = 'active' AND h.health = 'up' AND h.gpu_count >= $3
     AND coalesce(h.port_range_to - h.port_range_from + 1, 0) >= $4
     AND ($5::text IS NULL OR string_to_array(h.cuda_version, '.')::int[] >= string_to_array($5::text, '.')::int[])
     AND h.id NOT IN (SELECT host_id FROM touched)  -- a hashed set, tested as the index is walked
   ORDER BY h.gpu_count, h.id LIMIT 1))
SELECT id FROM fits ORDER BY free, id LIMIT 1)sql"};
// A pool's active spot instances bidding below a price, by host (the lock order) then id.
inline const Statement kSpotBidsBelow{"pool_spot_bids_below", R"sql(
SELECT id, host_id FROM instances
WHERE region = $1 AND gpu_model = $2 AND market = 'spot' AND state IN ('provisioning', 'running')
  AND max_price_micros < $3
ORDER BY host_id, id)sql"};
// Whether a host takes new instances, from its state and health columns (the pool's rows, and a
// host locked by kLockHostState or kLockHostSlot); hosts_placeable indexes the same hosts.
inline bool Placeable(const std::string& state, const std::string& health) {
  return state == "active" && health == "up";
}
inline const Statement kLockHostState{"lock_host_state", "SELECT state, health FROM hosts WHERE id = $1 FOR NO KEY UPDATE"};
// One host as the pool's rows show it (state, health, free ports), locked as kLockHostState locks it.
inline const Statement kLockHostSlot{"lock_host_slot",
                                    "SELECT " SPW_POOL_HOST_COLUMNS "FROM hosts WHERE id = $1 FOR NO KEY UPDATE"};
inline const Statement kHostFreeGpus{"host_free_gpus", R"sql(
SELECT g.gpu_index FROM gpus g
WHERE g.host_id = $1
  AND NOT EXISTS (SELECT 1 FROM gpu_allocations a WHERE a.host_id = g.host_id AND a.gpu_index = g.gpu_index)
ORDER BY g.gpu_index)sql"};
inline const Statement kBumpHost{"bump_host", "UPDATE hosts SET assignment_version = assignment_version + 1 WHERE id = $1"};
// An instance's GPUs on its host ($2: their indices), in one statement rather than one per GPU.
inline const Statement kAllocate{"allocate_gpus",
                                 "INSERT INTO gpu_allocations (host_id, gpu_index, instance_id) "
                                 "SELECT $1, g, $3 FROM unnest($2::integer[]) AS g"};
inline const Statement kSetPlaced{"set_instance_placed", R"sql(
UPDATE instances SET state = $2, host_id = $3, gpu_indices = $4::integer[], last_reported_at = $5::timestamptz,
       version = version + 1
WHERE id = $1)sql"};
inline const Statement kPreempt{"preempt_instance", R"sql(
UPDATE instances SET state = 'preempting', preempt_at = $2::timestamptz, preempt_reason = $3, version = version + 1
WHERE id = $1 AND state IN ('provisioning', 'running')
RETURNING host_id, region, gpu_model)sql"};
inline const Statement kEndInstance{"end_instance", R"sql(
UPDATE instances SET state = $2, end_reason = COALESCE(end_reason, $3), ended_at = greatest($4::timestamptz, created_at),
       version = version + 1
WHERE id = $1 AND instance_is_live(state)
RETURNING host_id)sql"};
inline const Statement kFreeGpus{"free_instance_gpus", "DELETE FROM gpu_allocations WHERE instance_id = $1"};
inline const Statement kUpsertReservation{"upsert_reservation", R"sql(
INSERT INTO pool_reservations (region, gpu_model, internal_reserved_gpus) VALUES ($1, $2, $3)
ON CONFLICT (region, gpu_model) DO UPDATE SET internal_reserved_gpus = EXCLUDED.internal_reserved_gpus,
                                              updated_at = now())sql"};
inline const Statement kHeartbeatHost{"heartbeat_host", R"sql(
UPDATE hosts SET last_heartbeat = $3::timestamptz, health = 'up', down_since = NULL, down_reason = NULL,
       agent_version = NULLIF($2, '')
WHERE id = $1 RETURNING assignment_version, health)sql"};
inline const Statement kHostVersionOf{"host_version_of", "SELECT assignment_version FROM hosts WHERE id = $1"};
inline const Statement kLockHost{"lock_host", "SELECT 1 FROM hosts WHERE id = $1 FOR NO KEY UPDATE"};
inline const Statement kInstanceHostOf{"instance_host_of", "SELECT host_id FROM instances WHERE id = $1"};
inline const Statement kLockInstanceRow{"lock_instance_row",
                                 "SELECT state, host_id, tenant_id FROM instances WHERE id = $1 FOR UPDATE"};
inline const Statement kLockHostInstance{"lock_host_instance",
                                  "SELECT state FROM instances WHERE id = $1 AND host_id = $2 FOR UPDATE"};
inline const Statement kReported{"instance_reported", R"sql(
UPDATE instances SET last_reported_at = $3::timestamptz,
       state = CASE WHEN $2 AND state = 'provisioning' THEN 'running' ELSE state END,
       started_at = CASE WHEN $2 AND state = 'provisioning' THEN $3::timestamptz ELSE started_at END,
       version = version + CASE WHEN $2 AND state = 'provisioning' THEN 1 ELSE 0 END
WHERE id = $1)sql"};
inline const Statement kAllPools{"all_pools", "SELECT DISTINCT region, gpu_model FROM hosts ORDER BY region, gpu_model"};
inline const Statement kHostHealth{"host_health", R"sql(
SELECT id, region, health, state, (extract(epoch FROM last_heartbeat) * 1000)::bigint AS heartbeat_ms,
       (extract(epoch FROM down_since) * 1000)::bigint AS down_since_ms, down_reason = 'mass_silence' AS braked
FROM hosts ORDER BY id)sql"};
inline const Statement kMarkDown{"mark_host_down", R"sql(
UPDATE hosts SET health = 'down', down_since = $2::timestamptz, down_reason = $3
WHERE id = $1 AND health = 'up' AND last_heartbeat = to_timestamp($4::bigint / 1000.0) RETURNING id)sql"};
inline const Statement kOnHost{"instances_on_host", "SELECT id FROM instances WHERE host_id = $1 AND " SPW_ON_HOST("state")};
inline const Statement kDuePreemptions{"due_preemptions",
                                "SELECT id FROM instances WHERE state = 'preempting' AND preempt_at <= $1::timestamptz "
                                "ORDER BY preempt_at"};
inline const Statement kPendingInstances{"pending_instances",
                                  "SELECT id, region, gpu_model, gpus, market, host_id FROM instances "
                                  "WHERE state = 'pending' ORDER BY created_at, id"};
inline const Statement kPendingOne{"pending_one", R"sql(
SELECT region, gpu_model, gpus, market, host_id, min_cuda,
       (SELECT count(*) FROM instance_ports p WHERE p.instance_id = instances.id) AS ports
FROM instances WHERE id = $1)sql"};
inline const Statement kLockInstanceState{"lock_instance_state", "SELECT state FROM instances WHERE id = $1 FOR UPDATE"};
// Instances on a host that is down were dealt with when it went down (failed, or kept by the
// brake until it answers again); only one that is being terminated is ended there.
inline const Statement kUnreported{"unreported_instances", R"sql(
SELECT i.id FROM instances i JOIN hosts h ON h.id = i.host_id
WHERE )sql" SPW_ON_HOST("i.state") R"sql(
  AND i.last_reported_at < $1::timestamptz AND (h.health = 'up' OR i.state = 'terminating'))sql"};
inline const Statement kGaugeInstances{"gauge_instances", "SELECT state, market, count(*) AS n FROM instances GROUP BY state, market"};
inline const Statement kGaugeHosts{"gauge_hosts", "SELECT health, state, count(*) AS n FROM hosts GROUP BY health, state"};
inline const Statement kGaugeHeartbeat{"gauge_heartbeat",
                                "SELECT COALESCE(EXTRACT(epoch FROM $1::timestamptz - min(last_heartbeat)), 0)::bigint AS age_s "
                                "FROM hosts WHERE health = 'up'"};

inline InstanceState StateOf(const pqxx::field& f) {
  return ParseInstanceState(f.as<std::string>()).value_or(InstanceState::kFailed);
}


inline ApiError NoCapacity(const std::string& why) { return ApiError(409, "insufficient_capacity", why); }

// Runs fn(tx, state) with the instance's host locked and then the instance (the lock order) in a
// transaction of its own; nothing when the instance is gone.
template <class Fn>
void WithInstanceLocked(Session& conn, const std::string& id, Fn&& fn) {
  InTransaction(conn, [&](pqxx::work& tx) {
    if (const auto locked = LockInstance(tx, id)) fn(tx, locked->state);
  });
}

}  // namespace spillway::fleet_sql
