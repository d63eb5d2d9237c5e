#include "protocol/agent.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cctype>
#include <set>

#include "core/errors.hpp"
#include "core/json.hpp"

namespace spillway::protocol {
namespace json = boost::json;

namespace {

json::value TimeOrNull(const std::optional<TimeMs>& t) {
  if (!t) return nullptr;
  return json::value(FormatTime(*t));
}

std::int64_t ReqInt(const json::object& o, std::string_view key, std::int64_t min, std::int64_t max) {
  const auto v = OptInt(o, key, min, max);
  if (!v) throw InvalidInput(std::string(key) + ": is required");
  return *v;
}

// The agent's side reads replies it trusts less strictly, but a missing field is still an error.
std::int64_t Int(const json::object& o, std::string_view key) { return o.at(key).to_number<std::int64_t>(); }
std::string Str(const json::object& o, std::string_view key) { return std::string(o.at(key).as_string()); }

}  // namespace

bool IsCudaVersion(std::string_view v) {
  const auto dot = v.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 2 || v.size() - dot - 1 == 0 || v.size() - dot - 1 > 2)
    return false;
  for (std::size_t i = 0; i < v.size(); ++i)
    if (i != dot && (v[i] < '0' || v[i] > '9')) return false;
  return true;
}

bool IsHostAddress(std::string_view a) {
  if (a.empty() || a.size() > 253) return false;
  for (char c : a)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':')) return false;
  return a.front() != '-' && a.front() != '.';
}

json::value ToJson(const Registration& r) {
  json::array gpus;
  for (const auto& g : r.gpus)
    gpus.push_back({{"index", g.index}, {"uuid", g.uuid}, {"model", g.model}, {"memory_bytes", g.memory_bytes}});
  json::object o{{"hostname", r.hostname}, {"region", r.region}, {"zone", r.zone}, {"gpus", std::move(gpus)}};
  if (r.driver_version) o["driver_version"] = *r.driver_version;
  if (r.cuda_version) o["cuda_version"] = *r.cuda_version;
  if (r.public_address) o["public_address"] = *r.public_address;
  if (r.port_range) o["port_range"] = json::object{{"from", r.port_range->from}, {"to", r.port_range->to}};
  if (r.simulated) o["simulated"] = true;
  return o;
}

json::value ToJson(const Registered& r) {
  return json::object{{"host_id", r.host_id},
                      {"host_token", r.host_token},
                      {"sample_interval_ms", r.sample_interval_ms},
                      {"heartbeat_interval_ms", r.heartbeat_interval_ms},
                      {"next_batch_seq", r.next_batch_seq}};
}

json::value ToJson(const WorkloadSpec& w) {
  json::array ports, volumes;
  json::object env;
  for (const auto& [name, value] : w.env) env[name] = value;
  for (const auto& p : w.ports)
    ports.push_back(json::object{{"internal", p.internal}, {"external", p.external}, {"protocol", p.protocol}});
  for (const auto& v : w.volumes)
    volumes.push_back(json::object{{"volume_id", v.volume_id}, {"mount_path", v.mount_path}, {"size_gb", v.size_gb}});
  return json::object{{"image", w.image ? json::value(*w.image) : json::value(nullptr)},
                      {"command", json::value_from(w.command)},
                      {"env", std::move(env)},
                      {"authorized_keys", json::value_from(w.authorized_keys)},
                      {"ports", std::move(ports)},
                      {"volumes", std::move(volumes)},
                      {"disk_gb", w.disk_gb ? json::value(*w.disk_gb) : json::value(nullptr)}};
}

json::value ToJson(const AssignmentList& a) {
  json::array instances;
  for (const auto& i : a.instances) {
    json::array idx;
    for (int g : i.gpu_indices) idx.push_back(g);
    instances.push_back({{"id", i.id}, {"desired_state", i.desired_state}, {"gpu_indices", std::move(idx)},
                         {"preempt_at", TimeOrNull(i.preempt_at)}, {"spec", ToJson(i.spec)}});
  }
  return json::object{{"version", a.version}, {"instances", std::move(instances)}};
}

json::value ToJson(const Heartbeat& h) {
  json::array report;
  for (const auto& i : h.instances) report.push_back({{"id", i.id}, {"state", i.state}});
  return json::object{{"instances", std::move(report)}, {"agent_version", h.agent_version}};
}

json::value ToJson(const HeartbeatAnswer& h) { return json::object{{"version", h.version}}; }

json::value ToJson(const Sample& s) {
  json::value instance = nullptr;
  if (s.instance_id) instance = json::value(*s.instance_id);
  return json::object{{"ts_ms", EpochMs(s.ts_ms)},       {"gpu_index", s.gpu_index},
                      {"instance_id", std::move(instance)}, {"interval_ms", s.interval_ms},
                      {"util_pct", s.util_pct},             {"mem_used_bytes", s.mem_used_bytes},
                      {"power_mw", s.power_mw},             {"energy_mj", s.energy_mj}};
}

json::value ToJson(const SampleBatch& b) {
  json::array samples;
  samples.reserve(b.samples.size());
  for (const auto& s : b.samples) samples.push_back(ToJson(s));
  json::object o{{"batch_seq", b.batch_seq}, {"sampled_through_ms", EpochMs(b.sampled_through_ms)}};
  if (b.sent_at_ms) o["sent_at_ms"] = EpochMs(*b.sent_at_ms);
  o["samples"] = std::move(samples);
  return o;
}

json::value ToJson(const SamplesAnswer& a) { return json::object{{"accepted", a.accepted}, {"duplicate", a.duplicate}}; }

Registration ParseRegistration(const json::value& v) {
  const auto& body = RequireObject(v);
  OnlyKeys(body, {"hostname", "region", "zone", "gpus", "driver_version", "cuda_version", "public_address",
                  "port_range", "simulated"});
  Registration reg{ReqString(body, "hostname", 253), ReqString(body, "region", 100), ReqString(body, "zone", 100), {}};
  reg.driver_version = OptString(body, "driver_version", 64);
  reg.cuda_version = OptString(body, "cuda_version", 5);
  if (reg.cuda_version && !IsCudaVersion(*reg.cuda_version))
    throw InvalidInput("cuda_version: must be MAJOR.MINOR, such as 12.8");
  reg.public_address = OptString(body, "public_address", 253);
  if (reg.public_address && !IsHostAddress(*reg.public_address))
    throw InvalidInput("public_address: must be a host name or an IP address");
  if (const auto* pr = body.if_contains("port_range"); pr && !pr->is_null()) {
    const auto& o = RequireObject(*pr);
    OnlyKeys(o, {"from", "to"});
    const auto from = OptInt(o, "from", 1024, 65535), to = OptInt(o, "to", 1024, 65535);
    if (!from || !to || *from > *to)
      throw InvalidInput("port_range: must be {\"from\", \"to\"} with 1024 <= from <= to <= 65535");
    reg.port_range = PortRange{static_cast<int>(*from), static_cast<int>(*to)};
  }
  if (const auto* sim = body.if_contains("simulated"); sim && !sim->is_null()) {
    if (!sim->is_bool()) throw InvalidInput("simulated: must be true or false");
    reg.simulated = sim->as_bool();
  }
  const auto* gpus = body.if_contains("gpus");
  if (!gpus || !gpus->is_array() || gpus->as_array().empty() ||
      gpus->as_array().size() > static_cast<std::size_t>(kMaxGpusPerHost))
    throw InvalidInput("gpus: must be a list of 1 to 64 GPUs");
  std::set<std::int64_t> indices;
  std::set<std::string> uuids;
  for (const auto& gv : gpus->as_array()) {
    const auto& g = RequireObject(gv);
    OnlyKeys(g, {"index", "uuid", "model", "memory_bytes"});
    const auto index = OptInt(g, "index", 0, kMaxGpusPerHost - 1);
    if (!index) throw InvalidInput("gpus[].index: is required");
    Gpu gpu{*index, OptInt(g, "memory_bytes", 0, INT64_MAX).value_or(0), ReqString(g, "uuid", 100),
            ReqString(g, "model", 100)};
    if (!indices.insert(gpu.index).second || !uuids.insert(gpu.uuid).second)
      throw InvalidInput("gpus: indices and uuids must be unique");
    if (!reg.gpus.empty() && gpu.model != reg.gpus[0].model)
      throw InvalidInput("gpus: a host's GPUs must all be one model");
    reg.gpus.push_back(std::move(gpu));
  }
  return reg;
}

Heartbeat ParseHeartbeat(const json::value& v) {
  const auto& o = RequireObject(v);
  OnlyKeys(o, {"instances", "agent_version"});
  Heartbeat report;
  if (const auto* list = o.if_contains("instances")) {
    if (!list->is_array()) throw InvalidInput("instances: must be a list");
    for (const auto& iv : list->as_array()) {
      const auto& i = RequireObject(iv);
      ReportedInstance r{ReqString(i, "id", 64), ReqString(i, "state", 20)};
      if (r.state != "starting" && r.state != "running" && r.state != "stopped" && r.state != "failed")
        throw InvalidInput("instances[].state: must be starting, running, stopped or failed");
      report.instances.push_back(std::move(r));
    }
  }
  std::sort(report.instances.begin(), report.instances.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  report.agent_version = OptString(o, "agent_version", 64).value_or("");
  return report;
}

Sample ParseSample(const json::value& v) {
  const auto& o = RequireObject(v);
  OnlyKeys(o, {"ts_ms", "gpu_index", "instance_id", "interval_ms", "util_pct", "mem_used_bytes", "power_mw",
               "energy_mj"});
  Sample s;
  s.ts_ms = FromEpochMs(ReqInt(o, "ts_ms", 0, INT64_MAX / 2));
  s.gpu_index = static_cast<int>(ReqInt(o, "gpu_index", 0, kMaxGpusPerHost - 1));
  if (const auto* id = o.if_contains("instance_id"); id && !id->is_null()) s.instance_id = ReqString(o, "instance_id", 64);
  s.interval_ms = ReqInt(o, "interval_ms", 1, INT32_MAX);
  s.util_pct = static_cast<int>(ReqInt(o, "util_pct", 0, 100));
  s.mem_used_bytes = ReqInt(o, "mem_used_bytes", 0, INT64_MAX);
  s.power_mw = ReqInt(o, "power_mw", 0, INT32_MAX);
  s.energy_mj = ReqInt(o, "energy_mj", 0, INT64_MAX);
  return s;
}

SampleBatch ParseSampleBatch(const json::value& v) {
  const auto& o = RequireObject(v);
  OnlyKeys(o, {"batch_seq", "sampled_through_ms", "sent_at_ms", "samples"});
  SampleBatch b;
  b.batch_seq = ReqInt(o, "batch_seq", 0, INT64_MAX);
  b.sampled_through_ms = FromEpochMs(ReqInt(o, "sampled_through_ms", 0, INT64_MAX / 2));
  if (const auto sent = OptInt(o, "sent_at_ms", 0, INT64_MAX / 2)) b.sent_at_ms = FromEpochMs(*sent);
  const auto* list = o.if_contains("samples");
  if (!list || !list->is_array()) throw InvalidInput("samples: must be a list");
  if (list->as_array().size() > kMaxSamplesPerBatch)
    throw InvalidInput("samples: at most " + std::to_string(kMaxSamplesPerBatch) + " per batch");
  b.samples.reserve(list->as_array().size());
  std::size_t i = 0;
  for (const auto& sv : list->as_array()) {
    try {
      b.samples.push_back(ParseSample(sv));
    } catch (const InvalidInput& e) {
      throw SampleError(i, "samples[" + std::to_string(i) + "]." + e.what());
    }
    ++i;
  }
  return b;
}

Registered ParseRegistered(const json::value& v) {
  const auto& o = v.as_object();
  Registered r{Str(o, "host_id"), Str(o, "host_token"), Int(o, "sample_interval_ms"), Int(o, "heartbeat_interval_ms"), 0};
  if (const auto* n = o.if_contains("next_batch_seq")) r.next_batch_seq = n->to_number<std::int64_t>();  // older servers
  return r;
}

WorkloadSpec ParseWorkloadSpec(const json::value& v) {
  WorkloadSpec w;
  if (!v.is_object()) return w;
  const auto& o = v.as_object();
  if (const auto* image = o.if_contains("image"); image && image->is_string()) w.image = std::string(image->as_string());
  if (const auto* c = o.if_contains("command"))
    for (const auto& a : c->as_array()) w.command.emplace_back(a.as_string());
  if (const auto* env = o.if_contains("env"))
    for (const auto& [name, value] : env->as_object()) w.env.emplace_back(std::string(name), std::string(value.as_string()));
  if (const auto* keys = o.if_contains("authorized_keys"))
    for (const auto& k : keys->as_array()) w.authorized_keys.emplace_back(k.as_string());
  if (const auto* ports = o.if_contains("ports"))
    for (const auto& p : ports->as_array())
      w.ports.push_back({static_cast<int>(p.at("internal").to_number<std::int64_t>()),
                         static_cast<int>(p.at("external").to_number<std::int64_t>()),
                         std::string(p.at("protocol").as_string())});
  if (const auto* volumes = o.if_contains("volumes"))
    for (const auto& m : volumes->as_array())
      w.volumes.push_back({std::string(m.at("volume_id").as_string()), std::string(m.at("mount_path").as_string()),
                           static_cast<int>(m.at("size_gb").to_number<std::int64_t>())});
  if (const auto* disk = o.if_contains("disk_gb"); disk && !disk->is_null())
    w.disk_gb = static_cast<int>(disk->to_number<std::int64_t>());
  return w;
}

AssignmentList ParseAssignmentList(const json::value& v) {
  const auto& o = v.as_object();
  AssignmentList a{Int(o, "version"), {}};
  for (const auto& iv : o.at("instances").as_array()) {
    const auto& i = iv.as_object();
    AssignedInstance ai{Str(i, "id"), Str(i, "desired_state"), {}, std::nullopt};
    for (const auto& g : i.at("gpu_indices").as_array()) ai.gpu_indices.push_back(static_cast<int>(g.to_number<std::int64_t>()));
    if (const auto* p = i.if_contains("preempt_at"); p && p->is_string()) ai.preempt_at = ParseTime(p->as_string());
    if (const auto* spec = i.if_contains("spec")) ai.spec = ParseWorkloadSpec(*spec);
    a.instances.push_back(std::move(ai));
  }
  return a;
}

SamplesAnswer ParseSamplesAnswer(const json::value& v) {
  const auto& o = v.as_object();
  return {Int(o, "accepted"), o.at("duplicate").as_bool()};
}

SampleRepairs RepairSampleBatch(SampleBatch& batch, const std::string& error_body) {
  std::vector<std::size_t> unheld, overlapping;
  try {
    const auto v = json::parse(error_body);
    const auto& error = v.at("error").as_object();
    for (auto [name, into] : {std::pair{"unheld_sample_indexes", &unheld},
                              std::pair{"overlapping_sample_indexes", &overlapping}}) {
      const auto* list = error.if_contains(name);
      if (!list) continue;
      for (const auto& i : list->as_array()) {
        const std::int64_t k = i.as_int64();
        if (k < 0 || static_cast<std::size_t>(k) >= batch.samples.size()) return {};
        into->push_back(static_cast<std::size_t>(k));
      }
    }
  } catch (const std::exception&) {
    return {};
  }
  for (const std::size_t i : unheld) batch.samples[i].instance_id.reset();
  std::sort(overlapping.begin(), overlapping.end());
  overlapping.erase(std::unique(overlapping.begin(), overlapping.end()), overlapping.end());
  for (auto it = overlapping.rbegin(); it != overlapping.rend(); ++it)
    batch.samples.erase(batch.samples.begin() + static_cast<std::ptrdiff_t>(*it));
  return {static_cast<std::int64_t>(unheld.size()), static_cast<std::int64_t>(overlapping.size())};
}

}  // namespace spillway::protocol
