// Operators: the fleet's hosts, their GPUs and their state.
#include "apiserver/handlers/hosts.hpp"

#include <boost/json.hpp>

#include "apiserver/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "provisioning/fleet.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"

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

}  // namespace spillway::handlers
