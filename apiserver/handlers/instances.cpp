#include "apiserver/handlers/instances.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "billing/funds.hpp"
#include "apiserver/handlers/common.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/money.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/instances.hpp"

namespace spillway::handlers {
namespace {

const boost::json::array* OptArray(const boost::json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return nullptr;
  if (!v->is_array()) throw InvalidInput(std::string(key) + ": must be an array");
  return &v->as_array();
}

std::string StringAt(const boost::json::value& v, const std::string& field, std::size_t max_len) {
  if (!v.is_string()) throw InvalidInput(field + ": must be a string");
  if (v.as_string().size() > max_len) throw InvalidInput(field + ": at most " + std::to_string(max_len) + " bytes");
  return std::string(v.as_string());
}

// Runs fn, naming `prefix` (such as "ports[1]") before the field of any InvalidInput it throws.
template <class Fn>
void Within(const std::string& prefix, Fn&& fn) {
  try {
    fn();
  } catch (const InvalidInput& e) {
    throw InvalidInput(prefix + "." + e.what());
  }
}

// The launch spec's fields; the rules that need the whole spec are CheckLaunchSpec's.
LaunchSpec ParseSpec(const boost::json::object& body) {
  LaunchSpec spec;
  if (const auto image = OptString(body, "image", 255)) spec.image = *image;
  if (const auto* command = OptArray(body, "command"))
    for (std::size_t i = 0; i < command->size(); ++i)
      spec.command.push_back(StringAt((*command)[i], "command[" + std::to_string(i) + "]", kMaxCommandBytes));
  if (const auto* env = body.if_contains("env"); env && !env->is_null()) {
    if (!env->is_object()) throw InvalidInput("env: must be an object of names to string values");
    for (const auto& [name, value] : env->as_object())
      spec.env.emplace_back(std::string(name), StringAt(value, "env." + std::string(name), kMaxEnvValueBytes));
  }
  if (const auto* keys = OptArray(body, "ssh_key_ids"))
    for (const auto& k : *keys) spec.ssh_key_ids.push_back(StringAt(k, "ssh_key_ids[]", 64));
  if (const auto* ports = OptArray(body, "ports"))
    for (std::size_t i = 0; i < ports->size(); ++i) {
      const std::string at = "ports[" + std::to_string(i) + "]";
      if (!(*ports)[i].is_object()) throw InvalidInput(at + ": each is an object {port, protocol}");
      const auto& po = (*ports)[i].as_object();
      Within(at, [&] {
        OnlyKeys(po, {"port", "protocol"});
        const auto port = OptInt(po, "port", 1, 65535);
        if (!port) throw InvalidInput("port: required");
        spec.ports.push_back({static_cast<int>(*port), OptString(po, "protocol", 10).value_or("tcp")});
      });
    }
  if (const auto disk = OptInt(body, "disk_gb", 1, 65536)) spec.disk_gb = static_cast<int>(*disk);
  if (const auto* volumes = OptArray(body, "volumes"))
    for (std::size_t i = 0; i < volumes->size(); ++i) {
      const std::string at = "volumes[" + std::to_string(i) + "]";
      if (!(*volumes)[i].is_object()) throw InvalidInput(at + ": each is an object {volume_id, mount_path}");
      const auto& vo = (*volumes)[i].as_object();
      Within(at, [&] {
        OnlyKeys(vo, {"volume_id", "mount_path"});
        spec.volumes.push_back({ReqString(vo, "volume_id", 64), ReqString(vo, "mount_path", 255)});
      });
    }
  if (const auto cuda = OptString(body, "min_cuda", 10)) spec.min_cuda = *cuda;
  CheckLaunchSpec(spec);
  return spec;
}

boost::json::object InstanceJson(const Instance& i) {
  boost::json::array indices;
  for (int g : i.gpu_indices) indices.push_back(g);
  boost::json::object o{{"id", i.id},
                        {"tenant_id", i.tenant_id},
                        {"name", JsonText(i.name)},
                        {"instance_type", i.instance_type},
                        {"region", i.region},
                        {"market", ToString(i.market)},
                        {"max_price_per_gpu_hour", JsonMicros(i.max_price_micros)},
                        {"state", ToString(i.state)},
                        {"gpus", i.gpus},
                        {"gpu_model", i.gpu_model},
                        {"gpu_indices", std::move(indices)},
                        {"host_id", JsonText(i.host_id)},
                        {"created_at", FormatTime(i.created_at)},
                        {"started_at", JsonTime(i.started_at)},
                        {"ended_at", JsonTime(i.ended_at)},
                        // Why it ended, once it has (a termination's cause is recorded when it begins).
                        {"end_reason", i.ended_at ? JsonText(i.end_reason) : boost::json::value(nullptr)},
                        {"preempt_at", JsonTime(i.preempt_at)},
                        {"preempt_reason", JsonText(i.preempt_reason)}};
  o.reserve(o.size() + 16);  // the fields below: grown once, not as they come
  if (i.state == InstanceState::kPending) o["expected_placement_at"] = JsonTime(i.expected_placement_at);
  // The launch spec as given, but env by name only: its values are write-only.
  const InstanceAccess& a = i.access;
  o["image"] = JsonText(a.image);
  o["command"] = boost::json::value_from(a.command);
  o["env_names"] = boost::json::value_from(a.env_names);
  o["ssh_key_ids"] = boost::json::value_from(a.ssh_key_ids);
  boost::json::array ports, volumes, mappings;
  for (const auto& p : a.ports) ports.push_back(boost::json::object{{"port", p.port}, {"protocol", p.protocol}});
  for (const auto& v : a.volumes)
    volumes.push_back(boost::json::object{{"volume_id", v.volume_id}, {"mount_path", v.mount_path}});
  o["ports"] = std::move(ports);
  o["disk_gb"] = a.disk_gb ? boost::json::value(*a.disk_gb) : boost::json::value(nullptr);
  o["volumes"] = std::move(volumes);
  o["min_cuda"] = JsonText(a.min_cuda);
  // Where to connect, once it runs: its host's address and the external ports mapped to it.
  const bool reachable = (i.state == InstanceState::kRunning || i.state == InstanceState::kPreempting) && a.address;
  boost::json::value ssh = nullptr;
  if (reachable)
    for (const auto& m : a.mappings) {
      const std::string base = m.protocol + "://" + *a.address + ":" + std::to_string(m.external);
      mappings.push_back(boost::json::object{{"internal", m.internal},
                                             {"external", m.external},
                                             {"protocol", m.protocol},
                                             {"url", m.protocol == "http" ? base + "/" : base}});
      if (m.internal == kSshPort && !a.ssh_key_ids.empty())
        ssh = boost::json::object{{"host", *a.address}, {"port", m.external}, {"user", kSshUser}};
    }
  o["ssh"] = std::move(ssh);
  o["port_mappings"] = std::move(mappings);
  return o;
}

// Members act on their own tenant's instances; operators and admins on any (to look up what runs
// on a host, or stop a runaway one).
bool SeesAll(const Principal& p) { return p.role_bit & (kOperator | kAdmin); }
bool SeesAllTenants(const Ctx& ctx) { return SeesAll(ctx.principal); }

LaunchRequest ParseLaunch(const Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"instance_type", "region", "market", "max_price_per_gpu_hour", "name", "image", "command", "env",
                  "ssh_key_ids", "ports", "disk_gb", "volumes", "min_cuda"});
  LaunchRequest req;
  req.tenant_id = ctx.principal.tenant_id;
  const std::string type = ReqString(body, "instance_type", 100);
  req.type = ctx.config.FindInstanceType(type);
  if (!req.type) throw ApiError(422, "validation_failed", "instance_type: unknown instance type " + type);
  req.region = ReqString(body, "region", 100);
  const auto market = ParseMarket(ReqString(body, "market", 20));
  if (!market) throw ApiError(422, "validation_failed", "market: must be on_demand or spot");
  req.market = *market;
  req.name = OptName(body, "name", 200).value_or("");
  if (const auto mp = OptString(body, "max_price_per_gpu_hour", 40)) {
    if (req.market != Market::kSpot)
      throw ApiError(422, "validation_failed", "max_price_per_gpu_hour: only spot instances take a max price");
    const auto micros = ParseMicros(*mp);
    if (!micros || *micros <= 0)
      throw ApiError(422, "validation_failed", "max_price_per_gpu_hour: must be a positive USD amount such as \"1.500000\"");
    req.max_price_micros = *micros;
  }
  req.spec = ParseSpec(body);
  return req;
}

}  // namespace

Reply CreateInstance(Ctx& ctx) {
  const LaunchRequest req = ParseLaunch(ctx);
  const FleetContext fc{*ctx.fleet, ctx.fleet_metrics, ctx.clock, ctx.secrets};
  const auto funds = billing::FundsSettings::From(ctx.config);
  return ctx.Write([&](Tx& tx) {
    // A prepaid tenant needs the runway, a limited one room under its limit (402 otherwise).
    const TimeMs now = ctx.clock.Now();
    billing::CheckLaunchFunds(tx, req.tenant_id,
                              billing::LaunchBurnMicros(tx, req.type->gpu_model, req.region,
                                                        req.market == Market::kSpot ? "spot" : "on_demand",
                                                        static_cast<int>(req.type->gpus), now),
                              now, funds);
    const Instance instance = LaunchInstance(tx, fc, req);
    RecordAudit(tx, ctx.AuditOf(req.tenant_id, "instance.create", instance.id));
    return Reply{201, InstanceJson(instance)};
  });
}

namespace {
// The filter of GET /v1/instances, for the handler and its non-blocking form: a member sees its own
// tenant only (naming another is 404, filtering by host 400); the page is one longer than asked,
// to tell whether there is a next one.
InstanceFilter ListFilter(const Principal& principal, const QueryParams& query) {
  InstanceFilter f;
  f.limit = QueryLimit(query) + 1;
  f.after = QueryText(query, "cursor");
  if (!f.after.empty() && !IsValidId(f.after, "ins"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  if (const std::string s = QueryText(query, "state"); !s.empty()) {
    f.state = ParseInstanceState(s);
    if (!f.state) throw ApiError(400, "invalid_parameter", "state: unknown state " + s);
  }
  if (const std::string m = QueryText(query, "market"); !m.empty()) {
    f.market = ParseMarket(m);
    if (!f.market) throw ApiError(400, "invalid_parameter", "market must be on_demand or spot");
  }
  f.tenant_id = QueryText(query, "tenant_id");
  f.host_id = QueryText(query, "host_id");
  if (!SeesAll(principal)) {
    if (!f.host_id.empty()) throw ApiError(400, "invalid_parameter", "host_id: only operators and admins filter by host");
    // A member asking for another tenant learns nothing: its own tenant only, as 404 elsewhere.
    if (!f.tenant_id.empty() && f.tenant_id != principal.tenant_id) throw ApiError(404, "not_found", "no such tenant");
    f.tenant_id = principal.tenant_id;
  }
  if (!f.tenant_id.empty() && !IsValidId(f.tenant_id, "ten")) throw ApiError(400, "invalid_parameter", "tenant_id is not a tenant id");
  if (!f.host_id.empty() && !IsValidId(f.host_id, "hst")) throw ApiError(400, "invalid_parameter", "host_id is not a host id");
  return f;
}
}  // namespace

Reply ListInstances(Ctx& ctx) {
  const InstanceFilter f = ListFilter(ctx.principal, ctx.request.query);
  const auto instances = ctx.Read([&](Tx& tx) { return spillway::ListInstances(tx, f); });
  return {200, Page(instances, f.limit - 1, InstanceJson)};
}

namespace {
// ListInstances' non-blocking form: the same filter, statement and page.
std::vector<std::string> ListInstancesParams(const Principal& principal, const Params&, const QueryParams& query) {
  return ListInstancesValues(ListFilter(principal, query));
}
Reply RenderInstances(const Principal&, const Params&, const QueryParams& query, const PgResult& rows) {
  return {200, Page(FoundInstances(rows), QueryLimit(query), InstanceJson)};
}
}  // namespace

const AsyncRead kListInstancesAsync{ListInstancesStatement, ListInstancesParams, RenderInstances};

Reply GetInstance(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  const auto instance = IsValidId(id, "ins") ? ctx.Read([&](Tx& tx) { return FindInstance(tx, id); }) : std::nullopt;
  // Another tenant's instance is 404 to a member, never 403.
  if (!instance || (!SeesAllTenants(ctx) && instance->tenant_id != ctx.principal.tenant_id))
    throw ApiError(404, "not_found", "no such instance");
  return {200, InstanceJson(*instance)};
}

namespace {
// GetInstance's non-blocking form: the same rules (a malformed id, or another tenant's instance to
// a member, is 404), the same statement and the same JSON.
std::vector<std::string> GetInstanceParams(const Principal&, const Params& params, const QueryParams&) {
  const std::string& id = params.at("id");
  if (!IsValidId(id, "ins")) throw ApiError(404, "not_found", "no such instance");
  return {id};
}
Reply RenderInstance(const Principal& principal, const Params&, const QueryParams&, const PgResult& rows) {
  const auto instance = FoundInstance(rows);
  if (!instance || (!SeesAll(principal) && instance->tenant_id != principal.tenant_id))
    throw ApiError(404, "not_found", "no such instance");
  return {200, InstanceJson(*instance)};
}
}  // namespace

const AsyncRead kGetInstanceAsync{FindInstanceStatement, GetInstanceParams, RenderInstance};

Reply TerminateInstance(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  if (!IsValidId(id, "ins")) throw ApiError(404, "not_found", "no such instance");
  const std::string scope = SeesAllTenants(ctx) ? "" : ctx.principal.tenant_id;
  return ctx.Write([&](Tx& tx) {
    const auto out = spillway::TerminateInstance(tx, id, scope, "terminated", ctx.clock.Now());
    if (!out) throw ApiError(404, "not_found", "no such instance");
    // Audited under the instance's tenant, with the acting key (an operator's or admin's, too).
    if (out->changed) RecordAudit(tx, ctx.AuditOf(out->instance.tenant_id, "instance.terminate", id));
    return Reply{200, InstanceJson(out->instance)};
  });
}

}  // namespace spillway::handlers
