// spillway-agent: one per GPU host (or, with --simulate-hosts N, N simulated hosts in one process).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/duration.hpp"
#include "core/log.hpp"
#include "core/config.hpp"
#include "agent/admin_server.hpp"
#include "agent/host_agent.hpp"
#include "agent/http_client.hpp"

using namespace spillway;
using namespace spillway::agent;

namespace {
constexpr const char* kUsage =
    "usage: spillway-agent --api URL --bootstrap-token T [--region R] [--zone Z]\n"
    "                      [--runtime simulated|exec] [--launcher CMD] [--stop-grace 10s]\n"
    "                      [--simulate-hosts N --gpu-model M --gpus-per-host G] [--boot-delay 2s]\n"
    "                      [--hostname NAME] [--log-level info] [--state-dir DIR] [--drain-on-exit]\n"
    "                      [--sampler simulated|nvml] [--nvml-library PATH] [--spool-max-bytes N]\n"
    "                      [--admin-listen HOST:PORT] [--public-address ADDR] [--port-range FROM-TO]\n"
    "                      [--cuda-version 12.8] [--volume-root DIR] [--ca-file PEM]\n"
    "  --api              the apiserver, http://HOST:PORT or https://HOST:PORT\n"
    "  --ca-file PEM      https: trust these CA certificates instead of the system's\n"
    "  --bootstrap-token  the fleet's bootstrap token (or SPILLWAY_AGENT_BOOTSTRAP_TOKEN)\n"
    "  --runtime          simulated (default): instances boot for --boot-delay, then run;\n"
    "                     exec: runs `sh -c CMD` per instance with CUDA_VISIBLE_DEVICES,\n"
    "                     SPILLWAY_INSTANCE_ID and the launch spec (SPILLWAY_SPEC_FILE, SPILLWAY_IMAGE,\n"
    "                     ...; see README) set, stopped with SIGTERM, then SIGKILL after --stop-grace\n"
    "  --simulate-hosts   stand in for N hosts, each with --gpus-per-host GPUs of --gpu-model\n"
    "  --state-dir        where each host keeps what its instances are (default /var/lib/spillway-agent);\n"
    "                     instances outlive the agent and a restarted agent takes them up again\n"
    "  --drain-on-exit    on SIGTERM/SIGINT, stop every instance first (decommissioning a host);\n"
    "                     without it the agent exits and leaves its instances running\n"
    "  --sampler          what each GPU is read with every sample interval: simulated (default) or\n"
    "                     nvml (libnvidia-ml.so.1 via dlopen; the host's GPUs are discovered, and\n"
    "                     --gpu-model only renames their model)\n"
    "  --nvml-library     the NVML library to load (default libnvidia-ml.so.1)\n"
    "  --spool-max-bytes  the on-disk sample spool's bound (default 1073741824); beyond it the oldest\n"
    "                     unsent samples are dropped, logged and counted\n"
    "  --admin-listen     serve GET /metrics (spool, shipping, sampler errors per host) and /healthz\n"
    "  --public-address   where tenants reach this host (default: the hostname)\n"
    "  --port-range       the ports this host maps to instances' ports (default 20000-29999)\n"
    "  --cuda-version     the CUDA version simulated hosts claim (nvml reads the driver's)\n"
    "  --volume-root      where volumes live: a filesystem shared by the region's hosts, one\n"
    "                     directory per volume (an instance with volumes fails on a host without it)\n";

int Usage(const std::string& why) {
  std::cerr << "spillway-agent: " << why << "\n" << kUsage;
  return 2;
}

// Prometheus text for every host this process stands for.
std::string MetricsText(const std::vector<std::unique_ptr<HostAgent>>& agents, const std::vector<std::string>& names) {
  struct Family {
    const char *name, *type, *help;
    std::int64_t (*value)(const MeteringStats&);
  };
  static const Family kFamilies[] = {
      {"spillway_agent_spool_bytes", "gauge", "Bytes of the host's sample spool on disk",
       [](const MeteringStats& m) { return m.spool.bytes; }},
      {"spillway_agent_spool_unsent_samples", "gauge", "Samples recorded and not yet acknowledged by the apiserver",
       [](const MeteringStats& m) { return m.spool.unsent_samples; }},
      {"spillway_agent_samples_dropped_total", "counter", "Unsent samples dropped because the spool hit --spool-max-bytes",
       [](const MeteringStats& m) { return m.spool.dropped_samples; }},
      {"spillway_agent_batches_shipped_total", "counter", "Sample batches the apiserver stored (200)",
       [](const MeteringStats& m) { return m.batches_shipped; }},
      {"spillway_agent_batches_quarantined_total", "counter", "Sample batches the apiserver refused (422), kept aside",
       [](const MeteringStats& m) { return m.spool.quarantined_batches; }},
      {"spillway_agent_samples_unattributed_total", "counter",
       "Samples sent again without their instance: the control plane had taken its GPU back (422)",
       [](const MeteringStats& m) { return m.samples_unattributed; }},
      {"spillway_agent_samples_already_stored_total", "counter",
       "Samples left out of a batch sent again: the apiserver already held that GPU time (422)",
       [](const MeteringStats& m) { return m.samples_already_stored; }},
      {"spillway_agent_ship_failures_total", "counter", "Attempts to ship a batch that got no 200 (kept, sent again)",
       [](const MeteringStats& m) { return m.ship_failures; }},
      {"spillway_agent_sampler_errors_total", "counter", "Sampling ticks lost to a failing sampler (NVML) call",
       [](const MeteringStats& m) { return m.sampler_errors; }},
      {"spillway_agent_spool_torn_records_total", "counter", "Torn records dropped when the spool was opened",
       [](const MeteringStats& m) { return m.spool.torn_records; }},
  };
  std::vector<MeteringStats> stats;
  for (const auto& a : agents) stats.push_back(a->Metering());
  std::string out;
  for (const auto& f : kFamilies) {
    out += std::string("# HELP ") + f.name + " " + f.help + "\n# TYPE " + f.name + " " + f.type + "\n";
    for (std::size_t i = 0; i < stats.size(); ++i) {
      std::string host;
      for (char c : names[i]) {
        if (c == '\\' || c == '"') host += '\\';
        host += c;
      }
      out += std::string(f.name) + "{hostname=\"" + host + "\"} " + std::to_string(f.value(stats[i])) + "\n";
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // The exec runtime's shim (see RunShim): started by the agent itself, not by operators.
  if (argc == 4 && std::string(argv[1]) == "--shim") return RunShim(argv[2], argv[3]);
  std::map<std::string, std::string> flags = {
      {"--region", "local"}, {"--zone", ""}, {"--runtime", "simulated"}, {"--stop-grace", "10s"},
      {"--boot-delay", "2s"}, {"--log-level", "info"}, {"--gpus-per-host", "8"}, {"--simulate-hosts", "0"},
      {"--state-dir", "/var/lib/spillway-agent"}, {"--sampler", "simulated"}, {"--nvml-library", ""},
      {"--spool-max-bytes", "1073741824"}, {"--admin-listen", ""}, {"--port-range", "20000-29999"},
      {"--cuda-version", "12.8"}, {"--volume-root", ""}, {"--ca-file", ""}};
  bool drain_on_exit = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (arg == "--drain-on-exit") {
      drain_on_exit = true;
      continue;
    }
    std::string value;
    if (const auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return Usage(arg + " needs a value");
    }
    static const std::vector<std::string> kKnown = {
        "--api", "--bootstrap-token", "--region", "--zone", "--runtime", "--launcher", "--stop-grace",
        "--simulate-hosts", "--gpu-model", "--gpus-per-host", "--boot-delay", "--hostname", "--log-level",
        "--state-dir", "--sampler", "--nvml-library", "--spool-max-bytes", "--admin-listen", "--public-address", "--port-range",
        "--cuda-version", "--volume-root", "--ca-file"};
    if (std::find(kKnown.begin(), kKnown.end(), arg) == kKnown.end()) return Usage("unknown option " + arg);
    flags[arg] = value;
  }
  log::Init(flags["--log-level"]);
  if (std::string& root = flags["--volume-root"]; !root.empty()) {
    std::string why;
    if (!PrepareStateDir(root, &why)) return Usage("--volume-root: " + why);
    if (root[0] != '/') {  // launchers get absolute paths, whatever their working directory
      char cwd[4096];
      if (::getcwd(cwd, sizeof cwd)) root = std::string(cwd) + "/" + root;
    }
  }
  if (!flags.count("--api")) return Usage("--api is required");
  try {  // a URL or CA file the client refuses is a usage error now, not a retry loop later
    HttpClient probe(flags["--api"], "", flags["--ca-file"]);
  } catch (const std::invalid_argument& e) {
    return Usage(e.what());
  }
  std::string token = flags.count("--bootstrap-token") ? flags["--bootstrap-token"] : "";
  if (token.empty())
    if (const char* env = std::getenv("SPILLWAY_AGENT_BOOTSTRAP_TOKEN")) token = env;
  if (token.empty()) return Usage("--bootstrap-token (or SPILLWAY_AGENT_BOOTSTRAP_TOKEN) is required");
  const std::string runtime = flags["--runtime"];
  if (runtime != "simulated" && runtime != "exec") return Usage("--runtime must be simulated or exec");
  if (runtime == "exec" && flags["--launcher"].empty()) return Usage("--runtime exec needs --launcher CMD");
  const auto stop_grace = ParseDuration(flags["--stop-grace"]);
  const auto boot_delay = ParseDuration(flags["--boot-delay"]);
  if (!stop_grace || !boot_delay) return Usage("--stop-grace and --boot-delay take durations such as 2s");
  int hosts = 0, gpus_per_host = 0;
  try {
    hosts = std::stoi(flags["--simulate-hosts"]);
    gpus_per_host = std::stoi(flags["--gpus-per-host"]);
  } catch (const std::exception&) {
    return Usage("--simulate-hosts and --gpus-per-host take integers");
  }
  if (hosts < 0 || hosts > 1000 || gpus_per_host < 1 || gpus_per_host > 64)
    return Usage("--simulate-hosts is 0-1000 and --gpus-per-host 1-64");
  const std::string sampler_kind = flags["--sampler"];
  if (sampler_kind != "simulated" && sampler_kind != "nvml") return Usage("--sampler must be simulated or nvml");
  std::int64_t spool_max = 0;
  try {
    spool_max = std::stoll(flags["--spool-max-bytes"]);
  } catch (const std::exception&) {
    spool_max = -1;
  }
  if (spool_max < (1 << 20)) return Usage("--spool-max-bytes takes a number of bytes, at least 1048576");
  // With nvml the GPUs are discovered; simulated hosts are described by --gpu-model and --gpus-per-host.
  std::unique_ptr<NvmlSampler> nvml;
  NvmlHost discovered;
  if (sampler_kind == "nvml") {
    if (hosts > 0) return Usage("--sampler nvml reads this machine's GPUs: it cannot stand in for --simulate-hosts");
    std::string why;
    nvml = NvmlSampler::Open(flags["--nvml-library"], &why);
    if (!nvml) {
      std::cerr << "spillway-agent: " << why << "\n";
      return 2;
    }
    try {
      discovered = nvml->Discover();
    } catch (const SamplerError& e) {
      std::cerr << "spillway-agent: nvml unavailable: " << e.what() << "\n";
      return 2;
    }
    log::Info("nvml: GPUs discovered", {{"gpus", static_cast<std::int64_t>(discovered.gpus.size())},
                                        {"model", discovered.gpus.at(0).model},
                                        {"driver_version", discovered.driver_version},
                                        {"cuda_version", discovered.cuda_version}});
    if (flags.count("--gpu-model"))
      for (auto& g : discovered.gpus) g.model = flags["--gpu-model"];
  } else if (!flags.count("--gpu-model")) {
    return Usage("--gpu-model is required with the simulated sampler (e.g. H100-80GB)");
  }
  const std::string model = nvml ? discovered.gpus.at(0).model : flags["--gpu-model"];
  std::string base = flags.count("--hostname") ? flags["--hostname"] : "";
  if (base.empty()) {
    char name[256] = {0};
    ::gethostname(name, sizeof name - 1);
    base = name;
  }
  const std::string zone = flags["--zone"].empty() ? flags["--region"] + "-1a" : flags["--zone"];
  protocol::PortRange ports;
  {
    int from = 0, to = 0;
    char tail = 0;
    if (std::sscanf(flags["--port-range"].c_str(), "%d-%d%c", &from, &to, &tail) != 2 || from < 1024 || to > 65535 ||
        from > to)
      return Usage("--port-range takes FROM-TO within 1024-65535, such as 20000-29999");
    ports = {from, to};
  }
  if (!protocol::IsCudaVersion(flags["--cuda-version"])) return Usage("--cuda-version takes MAJOR.MINOR, such as 12.8");
  if (flags.count("--public-address") && !protocol::IsHostAddress(flags["--public-address"]))
    return Usage("--public-address takes a host name or an IP address");

  // Block the stop signals before any thread starts, then wait for one.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // The shim is this same binary (resolved now: the file may be replaced by an upgrade later).
  char self_path[4096] = {0};
  const ssize_t self_len = ::readlink("/proc/self/exe", self_path, sizeof self_path - 1);
  const std::string self = self_len > 0 ? std::string(self_path, static_cast<size_t>(self_len)) : argv[0];
  std::vector<std::unique_ptr<HostAgent>> agents;
  std::vector<std::string> names;
  const int count = hosts == 0 ? 1 : hosts;
  for (int h = 0; h < count; ++h) {
    HostOptions o;
    o.api = flags["--api"];
    o.ca_file = flags["--ca-file"];
    o.bootstrap_token = token;
    o.region = flags["--region"];
    o.zone = zone;
    o.hostname = hosts == 0 ? base : base + "-" + flags["--region"] + "-" + std::to_string(h);
    o.port_range = ports;
    o.public_address = flags.count("--public-address") ? flags["--public-address"] : o.hostname;
    if (nvml) {
      o.gpus = discovered.gpus;
      o.driver_version = discovered.driver_version;
      if (!discovered.cuda_version.empty()) o.cuda_version = discovered.cuda_version;
    } else {
      o.simulated = true;
      o.driver_version = "simulated";
      o.cuda_version = flags["--cuda-version"];
      for (int g = 0; g < gpus_per_host; ++g)
        o.gpus.push_back({g, HostAgent::SimulatedMemory(model), HostAgent::SimulatedUuid(o.hostname, g), model});
    }
    // One state folder per host: simulated hosts of one process keep theirs apart.
    const std::string state_dir = flags["--state-dir"] + "/" + o.hostname;
    o.state_dir = state_dir;
    std::string why;
    if (!PrepareStateDir(state_dir, &why)) return Usage("--state-dir: " + why);
    RuntimePtr rt;
    if (runtime == "exec")
      rt = std::make_unique<ExecRuntime>(flags["--launcher"], *stop_grace, state_dir, self, flags["--volume-root"]);
    else rt = std::make_unique<SimulatedRuntime>(*boot_delay, state_dir);
    MeteringOptions metering;
    metering.spool = Spool::Open({state_dir + "/spool", spool_max, 4LL << 20}, &why);
    if (!metering.spool) return Usage("--state-dir: the spool: " + why);
    metering.sampler = std::move(nvml);  // null for simulated hosts: each gets its own
    names.push_back(o.hostname);
    agents.push_back(std::make_unique<HostAgent>(std::move(o), std::move(rt), std::move(metering)));
  }
  std::unique_ptr<AdminServer> admin;
  if (!flags["--admin-listen"].empty()) {
    const auto listen = ParseHostPort(flags["--admin-listen"]);
    if (!listen) return Usage("--admin-listen takes HOST:PORT");
    try {
      admin = std::make_unique<AdminServer>(*listen, [&agents, &names] { return MetricsText(agents, names); });
    } catch (const std::exception& e) {
      std::cerr << "spillway-agent: " << e.what() << "\n";
      return 1;
    }
  }
  for (auto& a : agents) a->Start();
  if (admin) admin->Start();
  log::Info("spillway-agent running", {{"hosts", count}, {"runtime", runtime}, {"sampler", sampler_kind},
                                       {"gpu_model", model},
                                       {"region", flags["--region"]}});
  int sig = 0;
  sigwait(&stop_signals, &sig);
  if (admin) admin->Stop();
  for (auto& a : agents) a->Stop();
  if (drain_on_exit) {
    log::Info("spillway-agent stopping: draining, stopping every instance first");
    for (auto& a : agents) a->Drain(*stop_grace);
  } else {
    log::Info("spillway-agent stopping: its instances keep running and are taken up again at the next start");
  }
  // The long polls in flight hold nothing worth waiting for: the server keeps all state.
  std::_Exit(0);
}
