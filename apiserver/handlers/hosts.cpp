// Operators: the fleet's hosts, their GPUs and their state.
#include "apiserver/handlers/hosts.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "provisioning/hosts.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"

namespace spillway::handlers {
namespace {

boost::json::object HostJson(const Host& h) {
  return {{"id", h.id},
          {"hostname", h.hostname},
          {"region", h.region},
          {"zone", h.zone},
          {"gpu_model", h.gpu_model},
          {"gpu_count", h.gpu_count},
          {"state", h.state},
          {"health", h.health},
          {"agent_version", JsonText(h.agent_version)},
          {"last_heartbeat", JsonTime(h.last_heartbeat)},
          {"registered_at", JsonTime(h.registered_at)},
          {"gpus_allocated", h.gpus_allocated},
          {"live_instances", h.live_instances},
          {"down_reason", JsonText(h.down_reason)},
          {"down_since", JsonTime(h.down_since)},
          {"driver_version", JsonText(h.driver_version)},
          {"cuda_version", JsonText(h.cuda_version)},
          {"public_address", JsonText(h.public_address)},
          {"port_range", h.port_range_from ? boost::json::value(boost::json::object{{"from", *h.port_range_from},
                                                                                    {"to", *h.port_range_to}})
                                           : boost::json::value(nullptr)},
          {"simulated", h.simulated}};
}

}  // namespace

Reply ListHosts(Ctx& ctx) {
  HostFilter f;
  f.limit = ctx.Limit();
  f.after = ctx.Query("cursor");
  if (!f.after.empty() && !IsValidId(f.after, "hst"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  f.region = ctx.Query("region");
  f.gpu_model = ctx.Query("gpu_model");
  f.state = ctx.Query("state");
  const int limit = f.limit++;  // one more than the page: whether there is a next one
  const auto hosts = ctx.Read([&](Tx& tx) { return spillway::ListHosts(tx, f); });
  return {200, Page(hosts, limit, HostJson)};
}

Reply GetHost(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  if (!IsValidId(id, "hst")) throw ApiError(404, "not_found", "no such host");
  return ctx.ReadSnapshot([&](Tx& tx) {
    const auto host = FindHost(tx, id);
    if (!host) throw ApiError(404, "not_found", "no such host");
    auto json = HostJson(*host);
    boost::json::array gpus;
    for (const auto& g : HostGpus(tx, id))
      gpus.push_back({{"index", g.index},
                      {"uuid", g.uuid},
                      {"model", g.model},
                      {"memory_bytes", g.memory_bytes},
                      {"instance_id", JsonText(g.instance_id)}});
    json["gpus"] = std::move(gpus);
    return Reply{200, std::move(json)};
  });
}

Reply UpdateHost(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"state"});
  const std::string state = ReqString(body, "state", 20);
  if (state != "active" && state != "draining" && state != "disabled")
    throw ApiError(422, "validation_failed", "state: must be active, draining or disabled");
  if (!IsValidId(id, "hst")) throw ApiError(404, "not_found", "no such host");
  return ctx.Write([&](Tx& tx) {
    if (!SetHostState(tx, id, state)) throw ApiError(404, "not_found", "no such host");
    RecordAudit(tx, ctx.AuditOf("", "host." + state, id));
    return Reply{200, HostJson(*FindHost(tx, id))};
  });
}

}  // namespace spillway::handlers
