#include "apiserver/handlers/fleet.hpp"

#include <boost/json.hpp>
#include <charconv>
#include <set>

#include "apiserver/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "apiserver/auth/api_keys.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/heartbeats.hpp"
#include "billing/prices.hpp"
#include "billing/spot_curve.hpp"
#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "core/money.hpp"

namespace spillway::handlers {
namespace {

#define SPW_HOST_COLUMNS                                                                                     \
  "h.id, h.hostname, h.region, h.zone, h.gpu_model, h.gpu_count, h.state, h.health, h.agent_version, "      \
  "(extract(epoch FROM h.last_heartbeat) * 1000)::bigint, (extract(epoch FROM h.registered_at) * 1000)::bigint, " \
  "(SELECT count(*) FROM gpu_allocations a WHERE a.host_id = h.id), "                                        \
  "(SELECT count(*) FROM instances i WHERE i.host_id = h.id AND i.state NOT IN ('terminated', 'failed')), "     \
  "h.down_reason, (extract(epoch FROM h.down_since) * 1000)::bigint"

const Statement kListHosts{"list_hosts",
                           "SELECT " SPW_HOST_COLUMNS " FROM hosts h WHERE h.id > $1 AND ($2 = '' OR h.region = $2) "
                           "AND ($3 = '' OR h.gpu_model = $3) AND ($4 = '' OR h.state = $4) ORDER BY h.id LIMIT $5"};
const Statement kGetHost{"get_host", "SELECT " SPW_HOST_COLUMNS " FROM hosts h WHERE h.id = $1"};
const Statement kHostGpus{"host_gpus",
                          "SELECT g.gpu_index, g.uuid, g.model, g.memory_bytes, a.instance_id FROM gpus g "
                          "LEFT JOIN gpu_allocations a ON a.host_id = g.host_id AND a.gpu_index = g.gpu_index "
                          "WHERE g.host_id = $1 ORDER BY g.gpu_index"};
const Statement kSetHostState{"set_host_state", "UPDATE hosts SET state = $2 WHERE id = $1 RETURNING id"};
const Statement kPools{"capacity_pools", "SELECT DISTINCT region, gpu_model FROM hosts ORDER BY region, gpu_model"};
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


boost::json::object HostJson(const pqxx::row& r) {
  return {{"id", r[0].as<std::string>()},
          {"hostname", r[1].as<std::string>()},
          {"region", r[2].as<std::string>()},
          {"zone", r[3].as<std::string>()},
          {"gpu_model", r[4].as<std::string>()},
          {"gpu_count", r[5].as<std::int64_t>()},
          {"state", r[6].as<std::string>()},
          {"health", r[7].as<std::string>()},
          {"agent_version", JsonText(r[8])},
          {"last_heartbeat", JsonTime(r[9])},
          {"registered_at", JsonTime(r[10])},
          {"gpus_allocated", r[11].as<std::int64_t>()},
          {"live_instances", r[12].as<std::int64_t>()},
          {"down_reason", JsonText(r[13])},
          {"down_since", JsonTime(r[14])}};
}

boost::json::object PoolJson(pqxx::transaction_base& tx, const PoolState& p, TimeMs now) {
  const auto od = OnDemandPriceAt(tx, p.gpu_model, now);
  const auto spot = CurrentSpotPrice(tx, p.region, p.gpu_model);
  std::int64_t up_hosts = 0;
  for (const auto& h : p.hosts) up_hosts += h.placeable;
  return {{"region", p.region},
          {"gpu_model", p.gpu_model},
          {"hosts", static_cast<std::int64_t>(p.hosts.size())},
          {"placeable_hosts", up_hosts},
          {"total_gpus", p.total},
          {"internal_reserved_gpus", p.reserved},
          {"on_demand_gpus", p.on_demand},
          {"spot_gpus", p.spot_active + p.spot_leaving},
          {"spot_gpus_under_notice", p.spot_leaving},
          {"spare_gpus", p.Spare()},
          {"spare_fraction", static_cast<double>(SpareFractionPpm(p.Spare(), p.total)) / kPpm},
          {"on_demand_price_per_gpu_hour", od ? boost::json::value(FormatMicros(*od)) : boost::json::value(nullptr)},
          {"spot_price_per_gpu_hour", spot ? boost::json::value(FormatMicros(*spot)) : boost::json::value(nullptr)}};
}

// A host token: "spwh_" + the host id's 26 characters + "_" + a 256-bit secret.
std::string NewHostToken(const std::string& host_id, std::string* hash) {
  const std::string secret = Base64UrlEncode(RandomBytes(32));
  *hash = Sha256Hex(secret);
  return "spwh_" + host_id.substr(4) + "_" + secret;
}

Reply RegistrationReply(const Ctx& ctx, int status, const std::string& host_id, const std::string& token) {
  return {status, boost::json::object{{"host_id", host_id}, {"host_token", token},
                                      {"sample_interval_ms", ctx.config.Duration("agent.sample_interval").count()},
                                      {"heartbeat_interval_ms", ctx.config.Duration("agent.heartbeat_interval").count()}}};
}

}  // namespace

Reply ListHosts(Ctx& ctx) {
  const int limit = ctx.Limit();
  const std::string cursor = ctx.Query("cursor"), state = ctx.Query("state");
  if (!cursor.empty() && !IsValidId(cursor, "hst"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  pqxx::nontransaction tx(ctx.conn);
  const auto rows = tx.exec_prepared(kListHosts.name, cursor, ctx.Query("region"), ctx.Query("gpu_model"), state, limit + 1);
  return {200, Page(rows, limit, HostJson)};
}

Reply GetHost(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  pqxx::nontransaction tx(ctx.conn);
  const auto rows = IsValidId(id, "hst") ? tx.exec_prepared(kGetHost.name, id) : pqxx::result();
  if (rows.empty()) throw ApiError(404, "not_found", "no such host");
  auto json = HostJson(rows[0]);
  boost::json::array gpus;
  for (const auto& g : tx.exec_prepared(kHostGpus.name, id))
    gpus.push_back({{"index", g[0].as<int>()},
                    {"uuid", g[1].as<std::string>()},
                    {"model", g[2].as<std::string>()},
                    {"memory_bytes", g[3].as<std::int64_t>()},
                    {"instance_id", JsonText(g[4])}});
  json["gpus"] = std::move(gpus);
  return {200, std::move(json)};
}

Reply UpdateHost(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"state"});
  const std::string state = ReqString(body, "state", 20);
  if (state != "active" && state != "draining" && state != "disabled")
    throw ApiError(422, "validation_failed", "state: must be active, draining or disabled");
  if (!IsValidId(id, "hst")) throw ApiError(404, "not_found", "no such host");
  return ctx.Write([&](pqxx::transaction_base& tx) {
    if (tx.exec_prepared(kSetHostState.name, id, state).empty()) throw ApiError(404, "not_found", "no such host");
    Audit(tx, ctx, "", "host." + state, id);
    return Reply{200, HostJson(tx.exec_prepared(kGetHost.name, id)[0])};
  });
}

// Reports read several statements; a repeatable-read transaction gives them one snapshot, so a host
// registering meanwhile is in all of them or in none.
using Snapshot = pqxx::transaction<pqxx::isolation_level::repeatable_read, pqxx::readwrite_policy::read_only>;

Reply GetCapacity(Ctx& ctx) {
  Snapshot tx(ctx.conn);
  boost::json::array data;
  for (const auto& r : tx.exec_prepared(kPools.name))
    data.push_back(PoolJson(tx, LoadPool(tx, r[0].as<std::string>(), r[1].as<std::string>(), false), ctx.clock.Now()));
  return {200, boost::json::object{{"data", std::move(data)}}};
}

Reply SetPoolCapacity(Ctx& ctx) {
  const std::string& region = ctx.Param("region");
  const std::string& model = ctx.Param("gpu_model");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"internal_reserved_gpus"});
  const auto reserved = OptInt(body, "internal_reserved_gpus", 0, 1'000'000);
  if (!reserved) throw ApiError(422, "validation_failed", "internal_reserved_gpus: is required");
  const FleetContext fc{ctx.config, ctx.fleet_metrics, ctx.clock};
  auto json = ctx.Write([&](pqxx::transaction_base& tx) {
    SetReservation(tx, fc, region, model, *reserved);
    Audit(tx, ctx, "", "capacity.reserve", region + "/" + model + "=" + std::to_string(*reserved));
    return PoolJson(tx, LoadPool(tx, region, model, false), ctx.clock.Now());
  });
  // Less spare capacity moves the spot price now rather than at the next reprice.
  Reprice(ctx.conn, fc, region, model);
  return {200, std::move(json)};
}

Reply ListInstanceTypes(Ctx& ctx) {
  Snapshot tx(ctx.conn);
  std::map<std::string, std::vector<PoolState>> by_model;
  for (const auto& r : tx.exec_prepared(kPools.name))
    by_model[r[1].as<std::string>()].push_back(LoadPool(tx, r[0].as<std::string>(), r[1].as<std::string>(), false));
  boost::json::array data;
  for (const auto& t : ctx.config.instance_types()) {
    const auto od = OnDemandPriceAt(tx, t.gpu_model, ctx.clock.Now());
    boost::json::array regions;
    for (const auto& p : by_model[t.gpu_model]) {
      std::int64_t fits = 0;  // instances of this type that fit on one host's free GPUs, summed
      for (const auto& h : p.hosts)
        if (h.placeable && h.FreeEffective() > 0) fits += h.FreeEffective() / t.gpus;
      const auto spot = CurrentSpotPrice(tx, p.region, t.gpu_model);
      const std::int64_t od_room = std::max<std::int64_t>(0, p.total - p.reserved - p.on_demand);
      regions.push_back({{"region", p.region},
                         {"spot_price_per_gpu_hour", spot ? boost::json::value(FormatMicros(*spot)) : boost::json::value(nullptr)},
                         {"free_gpus", p.Spare()},
                         {"available_on_demand", od_room / t.gpus},
                         {"available_spot", std::min(fits, p.Spare() / t.gpus)}});
    }
    data.push_back({{"name", t.name},
                    {"gpu_model", t.gpu_model},
                    {"gpus", t.gpus},
                    {"vcpus", t.vcpus},
                    {"memory_gib", t.memory_gib},
                    {"on_demand_price_per_gpu_hour", od ? boost::json::value(FormatMicros(*od)) : boost::json::value(nullptr)},
                    {"regions", std::move(regions)}});
  }
  return {200, boost::json::object{{"data", std::move(data)}}};
}

Reply ListSpotPrices(Ctx& ctx) {
  const int limit = ctx.Limit(100, 1000);
  std::int64_t since_us = (EpochMs(ctx.clock.Now()) - 24LL * 3600 * 1000) * 1000;
  if (const std::string since = ctx.Query("since"); !since.empty()) {
    const auto t = ParseTime(since);
    if (!t) throw ApiError(400, "invalid_parameter", "since must be an RFC 3339 UTC time such as 2026-11-26T00:00:00Z");
    since_us = t->time_since_epoch().count() * 1000;
  }
  // The cursor is the last row's effective_from in microseconds since the epoch.
  // Cursors this API returns are times between 1970 and 9999; anything else was not one of them.
  constexpr std::int64_t kMaxCursorUs = 253402300799999999;
  std::int64_t after_us = 0;
  if (const std::string cursor = ctx.Query("cursor"); !cursor.empty()) {
    auto [p, ec] = std::from_chars(cursor.data(), cursor.data() + cursor.size(), after_us);
    if (ec != std::errc() || p != cursor.data() + cursor.size() || after_us < 0 || after_us > kMaxCursorUs)
      throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  }
  pqxx::nontransaction tx(ctx.conn);
  const auto points = SpotPriceHistory(tx, ctx.Query("region"), ctx.Query("gpu_model"), since_us, after_us, limit + 1);
  boost::json::array data;
  for (size_t i = 0; i < points.size() && i < static_cast<size_t>(limit); ++i) {
    const auto& p = points[i].price;
    data.push_back({{"region", p.region},
                    {"gpu_model", p.gpu_model},
                    {"effective_from", FormatTime(FromEpochMs(points[i].effective_from_us / 1000))},
                    {"price_per_gpu_hour", FormatMicros(p.price_micros)},
                    {"on_demand_price_per_gpu_hour", FormatMicros(p.on_demand_micros)},
                    {"spare_fraction", static_cast<double>(p.spare_fraction_ppm) / kPpm},
                    {"target_price_per_gpu_hour", FormatMicros(p.target_micros)}});
  }
  boost::json::value next = nullptr;
  if (points.size() > static_cast<size_t>(limit)) next = std::to_string(points[limit - 1].effective_from_us);
  return {200, boost::json::object{{"data", std::move(data)}, {"next_cursor", next}}};
}

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
  Reprice(ctx.conn, FleetContext{ctx.config, ctx.fleet_metrics, ctx.clock}, region, model);
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
  const std::int64_t max_wait = ctx.config.Duration("fleet.assignment_wait_max").count() / 1000;
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
