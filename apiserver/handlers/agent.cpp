// GPU hosts' agents (docs/protocol.md): registration, heartbeats, assignments.
#include "apiserver/handlers/agent.hpp"

#include <boost/json.hpp>

#include "apiserver/handlers/common.hpp"
#include "apiserver/auth/key_cache.hpp"
#include "metering/samples_store.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/hosts.hpp"
#include "provisioning/heartbeats.hpp"
#include "core/clock.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/log.hpp"

namespace spillway::handlers {
namespace {

Reply RegistrationReply(const Ctx& ctx, int status, const std::string& host_id, const std::string& token,
                        std::int64_t next_batch_seq) {
  return {status, protocol::ToJson(protocol::Registered{host_id, token, ctx.fleet->sample_interval.count(),
                                                        ctx.fleet->heartbeat_interval.count(), next_batch_seq})};
}

}  // namespace

bool FastHeartbeat(FastCall& call) {
  if (!call.heartbeats) return false;
  HeartbeatReport report;
  try {
    report = protocol::ParseHeartbeat(ParseJsonBody(call.request.body));
  } catch (const std::exception&) {
    return false;  // the full path says what is wrong with it
  }
  std::int64_t version = 0;
  if (!call.heartbeats->TryRecord(call.principal.host_id, report, call.clock.Now(), &version)) return false;
  http::Response r;
  r.body = ToJson(protocol::ToJson(protocol::HeartbeatAnswer{version})) + "\n";
  r.route = call.route;
  call.respond(std::move(r));
  return true;
}

Reply RegisterAgent(Ctx& ctx) {
  const Registration reg = protocol::ParseRegistration(ctx.body);
  const std::string& hostname = reg.hostname;
  const std::string& region = reg.region;
  const auto& gpus = reg.gpus;
  const std::string model = gpus[0].model;
  if (!ctx.config.OnDemandMicros(model))
    throw ApiError(422, "unknown_gpu_model", "gpus[].model: " + model + " has no on-demand price in the catalog");
  std::int64_t next_batch_seq = 0;
  const Registered out = ctx.Write([&](Tx& tx) {
    Registered r = RegisterHost(tx, reg, ctx.clock.Now());
    next_batch_seq = metering::NextBatchSeq(tx, r.host_id);
    // The pool's spot price follows its new GPUs at the leader's next tick: a storm of registrations
    // into one pool costs one whole-pool pass per tick, not one per registration behind its locks.
    MarkPoolToReprice(tx, region, model);
    return r;
  });
  const std::string& host_id = out.host_id;
  const std::string& token = out.token;
  if (out.existing) {
    if (ctx.key_cache) ctx.key_cache->InvalidateKey(host_id);  // other replicas: the trigger's NOTIFY
    log::Info("host registered again; old token revoked", {{"host_id", host_id}, {"hostname", hostname}});
    return RegistrationReply(ctx, 200, host_id, token, next_batch_seq);
  }
  log::Info("host registered", {{"host_id", host_id}, {"hostname", hostname}, {"region", region}, {"gpu_model", model},
                                {"gpus", static_cast<std::int64_t>(gpus.size())}});
  return RegistrationReply(ctx, 201, host_id, token, next_batch_seq);
}

Reply AgentHeartbeat(Ctx& ctx) {
  const HeartbeatReport report = protocol::ParseHeartbeat(ctx.body);
  const std::string& host = ctx.principal.host_id;
  std::int64_t v = 0;
  if (ctx.heartbeats && ctx.heartbeats->TryRecord(host, report, ctx.clock.Now(), &v))
    return {200, protocol::ToJson(protocol::HeartbeatAnswer{v})};
  const std::uint64_t generation = ctx.heartbeats ? ctx.heartbeats->Generation() : 0;
  v = ctx.Write([&](Tx& tx) {
    return RecordHeartbeat(tx, host, report.agent_version, report.instances, ctx.clock.Now());
  });
  if (ctx.heartbeats) ctx.heartbeats->Processed(generation, host, report, v);
  return {200, protocol::ToJson(protocol::HeartbeatAnswer{v})};
}

Reply AgentAssignments(Ctx& ctx) {
  const std::int64_t known = ctx.QueryInt("version", -1, -1, INT64_MAX);
  const std::int64_t max_wait = ctx.fleet->assignment_wait_max.count() / 1000;
  const std::int64_t wait = ctx.QueryInt("wait", 0, 0, max_wait);
  const std::string& host = ctx.principal.host_id;
  if (known >= 0 && wait > 0 && !ctx.long_poll_retry &&
      ctx.Read([&](Tx& tx) { return HostAssignmentVersion(tx, host); }) == known) {
    Reply r;
    r.long_poll_host = host;
    r.long_poll_ms = wait * 1000;
    return r;
  }
  if (!ctx.secrets) throw std::logic_error("assignments need the secret box to open env values");
  const Assignments a =
      ctx.ReadSnapshot([&](Tx& tx) { return HostAssignments(tx, host, *ctx.secrets); });  // one snapshot
  protocol::AssignmentList list{a.version, {}};
  for (const auto& i : a.instances)
    list.instances.push_back({i.instance_id, i.state == InstanceState::kTerminating ? "stopped" : "running",
                              i.gpu_indices, i.preempt_at, i.spec});
  return {200, protocol::ToJson(list)};
}

}  // namespace spillway::handlers
