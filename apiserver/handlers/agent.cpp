// GPU hosts' agents (docs/protocol.md): registration, heartbeats, assignments.
#include "apiserver/handlers/agent.hpp"

#include <boost/json.hpp>
#include <set>

#include "apiserver/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/heartbeats.hpp"
#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/log.hpp"

namespace spillway::handlers {
namespace {

const Statement kHostByName{"host_by_name",
                            "SELECT h.id, ARRAY(SELECT uuid FROM gpus g WHERE g.host_id = h.id ORDER BY uuid)::text "
                            "FROM hosts h WHERE h.hostname = $1 FOR UPDATE"};
const Statement kInsertHost{"insert_host", R"sql(
INSERT INTO hosts (id, hostname, region, zone, gpu_model, gpu_count, token_hash, last_heartbeat)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz))sql"};
const Statement kGpuTaken{"gpu_taken", "SELECT host_id FROM gpus WHERE uuid = $1"};
const Statement kInsertGpu{"insert_gpu",
                           "INSERT INTO gpus (host_id, gpu_index, uuid, model, memory_bytes) VALUES ($1, $2, $3, $4, $5)"};
const Statement kRotateHost{"rotate_host_token", R"sql(
UPDATE hosts SET token_hash = $2, region = $3, zone = $4, health = 'up', down_since = NULL, down_reason = NULL,
       last_heartbeat = $5::timestamptz, assignment_version = assignment_version + 1
WHERE id = $1)sql"};
const Statement kHostVersion{"host_version", "SELECT assignment_version FROM hosts WHERE id = $1"};
const Statement kAssignments{"host_assignments", R"sql(
SELECT id, state, gpu_indices, (extract(epoch FROM preempt_at) * 1000)::bigint FROM instances
WHERE host_id = $1 AND state IN ('provisioning', 'running', 'preempting', 'terminating') ORDER BY id)sql"};

std::string NewHostToken(const std::string& host_id, std::string* hash) {
  const std::string secret = Base64UrlEncode(RandomBytes(32));
  *hash = Sha256Hex(secret);
  return "spwh_" + host_id.substr(4) + "_" + secret;
}

Reply RegistrationReply(const Ctx& ctx, int status, const std::string& host_id, const std::string& token) {
  return {status, boost::json::object{{"host_id", host_id}, {"host_token", token},
                                      {"sample_interval_ms", ctx.fleet->sample_interval.count()},
                                      {"heartbeat_interval_ms", ctx.fleet->heartbeat_interval.count()}}};
}

}  // namespace

Reply RegisterAgent(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"hostname", "region", "zone", "gpus"});
  const std::string hostname = ReqString(body, "hostname", 253);
  const std::string region = ReqString(body, "region", 100);
  const std::string zone = ReqString(body, "zone", 100);
  const auto* gpus_v = body.if_contains("gpus");
  if (!gpus_v || !gpus_v->is_array() || gpus_v->as_array().empty() || gpus_v->as_array().size() > 64)
    throw ApiError(422, "validation_failed", "gpus: must be a list of 1 to 64 GPUs");
  struct Gpu {
    std::int64_t index, memory;
    std::string uuid, model;
  };
  std::vector<Gpu> gpus;
  std::set<std::int64_t> indices;
  std::set<std::string> uuids;
  for (const auto& gv : gpus_v->as_array()) {
    const auto& g = RequireObject(gv);
    OnlyKeys(g, {"index", "uuid", "model", "memory_bytes"});
    const auto index = OptInt(g, "index", 0, 63);
    if (!index) throw ApiError(422, "validation_failed", "gpus[].index: is required");
    Gpu gpu{*index, OptInt(g, "memory_bytes", 0, INT64_MAX).value_or(0), ReqString(g, "uuid", 100),
            ReqString(g, "model", 100)};
    if (!indices.insert(gpu.index).second || !uuids.insert(gpu.uuid).second)
      throw ApiError(422, "validation_failed", "gpus: indices and uuids must be unique");
    if (!gpus.empty() && gpu.model != gpus[0].model)
      throw ApiError(422, "validation_failed", "gpus: a host's GPUs must all be one model");
    gpus.push_back(gpu);
  }
  const std::string model = gpus[0].model;
  if (!ctx.config.OnDemandMicros(model))
    throw ApiError(422, "unknown_gpu_model", "gpus[].model: " + model + " has no on-demand price in the catalog");
  std::string sorted_uuids = "{";
  for (auto it = uuids.begin(); it != uuids.end(); ++it) sorted_uuids += (it == uuids.begin() ? "" : ",") + *it;
  sorted_uuids += "}";

  struct Outcome {
    bool existing;
    std::string host_id, token;
  };
  const Outcome out = ctx.Write([&](pqxx::transaction_base& tx) {
    const auto existing = tx.exec_prepared(kHostByName.name, hostname);
    std::string hash;
    if (!existing.empty()) {
      const std::string id = existing[0][0].as<std::string>();
      if (existing[0][1].as<std::string>() != sorted_uuids)
        throw ApiError(409, "host_conflict", "host " + hostname + " is registered with other GPUs");
      const std::string token = NewHostToken(id, &hash);
      tx.exec_prepared(kRotateHost.name, id, hash, region, zone, FormatTime(ctx.clock.Now()));
      AuditSystem(tx, "", "host.reregister", id);
      return Outcome{true, id, token};
    }
    const std::string id = NewId("hst");
    const std::string token = NewHostToken(id, &hash);
    tx.exec_prepared(kInsertHost.name, id, hostname, region, zone, model, static_cast<std::int64_t>(gpus.size()), hash,
                     FormatTime(ctx.clock.Now()));
    for (const auto& g : gpus) {
      // Checked first: a unique violation would abort the transaction, so the clear message could
      // not be told from it.
      if (!tx.exec_prepared(kGpuTaken.name, g.uuid).empty())
        throw ApiError(409, "host_conflict", "GPU " + g.uuid + " is already registered to another host");
      try {
        tx.exec_prepared(kInsertGpu.name, id, g.index, g.uuid, g.model, g.memory);
      } catch (const pqxx::unique_violation&) {  // registered by a concurrent request meanwhile
        throw ApiError(409, "host_conflict", "GPU " + g.uuid + " is already registered to another host");
      }
    }
    AuditSystem(tx, "", "host.register", id);
    return Outcome{false, id, token};
  });
  const std::string& host_id = out.host_id;
  const std::string& token = out.token;
  if (out.existing) {
    if (ctx.key_cache) ctx.key_cache->InvalidateKey(host_id);  // other replicas: the trigger's NOTIFY
    log::Info("host registered again; old token revoked", {{"host_id", host_id}, {"hostname", hostname}});
    return RegistrationReply(ctx, 200, host_id, token);
  }
  log::Info("host registered", {{"host_id", host_id}, {"hostname", hostname}, {"region", region}, {"gpu_model", model},
                                {"gpus", static_cast<std::int64_t>(gpus.size())}});
  // A new pool gets its first spot price at once; an existing pool's price reflects the new GPUs.
  Reprice(ctx.conn, FleetContext{*ctx.fleet, ctx.fleet_metrics, ctx.clock}, region, model);
  return RegistrationReply(ctx, 201, host_id, token);
}

Reply AgentHeartbeat(Ctx& ctx) {
  const HeartbeatReport report = ParseHeartbeat(ctx.body);
  const std::string& host = ctx.principal.host_id;
  std::int64_t v = 0;
  if (ctx.heartbeats && ctx.heartbeats->TryRecord(host, report, ctx.clock.Now(), &v))
    return {200, boost::json::object{{"version", v}}};
  const std::uint64_t generation = ctx.heartbeats ? ctx.heartbeats->Generation() : 0;
  v = ctx.Write([&](pqxx::transaction_base& tx) {
    return RecordHeartbeat(tx, host, report.agent_version, report.instances, ctx.clock.Now());
  });
  if (ctx.heartbeats) ctx.heartbeats->Processed(generation, host, report, v);
  return {200, boost::json::object{{"version", v}}};
}

Reply AgentAssignments(Ctx& ctx) {
  const std::int64_t known = ctx.QueryInt("version", -1, -1, INT64_MAX);
  const std::int64_t max_wait = ctx.fleet->assignment_wait_max.count() / 1000;
  const std::int64_t wait = ctx.QueryInt("wait", 0, 0, max_wait);
  Snapshot tx(ctx.conn);  // the version and the list from one snapshot
  const std::int64_t version = tx.exec_prepared(kHostVersion.name, ctx.principal.host_id)[0][0].as<std::int64_t>();
  if (version == known && wait > 0 && !ctx.long_poll_retry) {
    Reply r;
    r.long_poll_host = ctx.principal.host_id;
    r.long_poll_ms = wait * 1000;
    return r;
  }
  boost::json::array instances;
  for (const auto& r : tx.exec_prepared(kAssignments.name, ctx.principal.host_id)) {
    boost::json::array idx;
    for (int i : ParseIntArray(r[2].as<std::string>())) idx.push_back(i);
    instances.push_back({{"id", r[0].as<std::string>()},
                         {"desired_state", r[1].as<std::string>() == "terminating" ? "stopped" : "running"},
                         {"gpu_indices", std::move(idx)},
                         {"preempt_at", JsonTime(r[3])}});
  }
  tx.commit();
  return {200, boost::json::object{{"version", version}, {"instances", std::move(instances)}}};
}

}  // namespace spillway::handlers
