// spillway-fleet-sim: thousands of simulated GPU hosts in one process (agent/fleet_sim.hpp), for
// benchmarks (bench/fleet/run), tests and demos of a large fleet.
#include <sys/resource.h>

#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "agent/fleet_sim.hpp"
#include "core/duration.hpp"

using namespace spillway;

namespace {
constexpr const char* kUsage =
    "usage: spillway-fleet-sim --api URL [--api URL2 ...] --hosts N [--bootstrap-token T]\n"
    "                          [--gpus-per-host 8] [--gpu-model H100-80GB] [--region sim] [--zone Z]\n"
    "                          [--hostname-prefix sim] [--boot-delay 2s] [--ramp 0s] [--status-every 30s]\n"
    "                          [--short-connections 0]\n"
    "                          [--steady 60s --tenant-key KEY --launch-rate 2 --instance-type h100.1x\n"
    "                           --launch-hold 10s --converge-limit 5m --watch NAME=PID ... --pg-dsn DSN\n"
    "                           --metrics URL ... --close-and-wait 10s --report-json FILE]\n"
    "  --api              an apiserver (http://HOST:PORT); with several, host i starts on the i-th\n"
    "                     (round robin) and moves to the next when its own cannot be reached\n"
    "  --hosts            how many hosts, each with --gpus-per-host GPUs of --gpu-model, named\n"
    "                     PREFIX-00000, PREFIX-00001, ... (a restarted run is the same hosts)\n"
    "  --bootstrap-token  the fleet's bootstrap token (or SPILLWAY_AGENT_BOOTSTRAP_TOKEN)\n"
    "  --short-connections  0 (default): each host makes its calls other than the long poll over\n"
    "                     connections of its own (one for samples), as spillway-agent does; K: over K per\n"
    "                     apiserver shared by all hosts, as agents behind a load balancer with upstream\n"
    "                     keep-alive do (each host's long poll still holds a connection of its own)\n"
    "  --ramp             start the hosts over this long (default 0: all at once, a storm)\n"
    "  --steady           measure: once every host is registered and heard (within --converge-limit),\n"
    "                     this long, then print the report and exit (1 if it did not converge, saw\n"
    "                     503s, or a host was marked down at any moment, an instance failed or a\n"
    "                     sample was lost)\n"
    "  --tenant-key       a member key: launches --launch-rate instances a second meanwhile, each\n"
    "                     terminated --launch-hold after its host saw it\n"
    "  --watch NAME=PID   a process whose cores and RSS the report shows (a NAME starting with\n"
    "                     postgres counts the PID's children too: a postmaster)\n"
    "  --pg-dsn           the database: WAL bytes, hosts down (at the end, and polled every second\n"
    "                     from the storm on), failed instances, samples stored\n"
    "  --metrics URL      an apiserver's admin listener: the hosts it marked down during the run\n"
    "                     (its spillway_hosts_marked_down_total, read at the start and at the report:\n"
    "                     every host it serves, not only this run's)\n"
    "  --close-and-wait   after the report, close every connection, wait, show RSS again\n"
    "  Without --steady it runs until SIGINT/SIGTERM, with a status line every --status-every.\n";

int Usage(const std::string& why) {
  std::cerr << "spillway-fleet-sim: " << why << "\n" << kUsage;
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  agent::FleetSimOptions o;
  std::map<std::string, std::string> flags = {{"--hosts", "1"},         {"--gpus-per-host", "8"},  {"--boot-delay", "2s"},
                                              {"--ramp", "0s"},         {"--steady", "0s"},        {"--launch-rate", "0"},
                                              {"--launch-hold", "10s"}, {"--converge-limit", "5m"}, {"--close-and-wait", "0s"},
                                              {"--status-every", "30s"}, {"--short-connections", "0"}};
  static const std::vector<std::string> kKnown = {
      "--api",         "--hosts",        "--bootstrap-token", "--gpus-per-host", "--gpu-model",    "--region",
      "--zone",        "--hostname-prefix", "--boot-delay",   "--ramp",          "--status-every", "--steady",
      "--tenant-key",  "--launch-rate",  "--instance-type",   "--launch-hold",   "--converge-limit", "--watch",
      "--pg-dsn",      "--close-and-wait", "--report-json", "--short-connections", "--metrics"};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    }
    std::string value;
    if (const auto eq = arg.find('='); eq != std::string::npos && arg.rfind("--", 0) == 0) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return Usage(arg + " needs a value");
    }
    if (std::find(kKnown.begin(), kKnown.end(), arg) == kKnown.end()) return Usage("unknown option " + arg);
    if (arg == "--api") {
      o.apis.push_back(value);
    } else if (arg == "--metrics") {
      if (value.rfind("http://", 0) != 0) return Usage("--metrics takes http://HOST:PORT");
      o.metrics.push_back(value);
    } else if (arg == "--watch") {
      const auto eq = value.find('=');
      int pid = 0;
      try {
        pid = eq == std::string::npos ? 0 : std::stoi(value.substr(eq + 1));
      } catch (const std::exception&) {
      }
      if (pid <= 0) return Usage("--watch takes NAME=PID");
      o.watch.emplace_back(value.substr(0, eq), pid);
    } else {
      flags[arg] = value;
    }
  }
  if (o.apis.empty()) return Usage("--api is required");
  o.bootstrap_token = flags.count("--bootstrap-token") ? flags["--bootstrap-token"] : "";
  if (o.bootstrap_token.empty())
    if (const char* env = std::getenv("SPILLWAY_AGENT_BOOTSTRAP_TOKEN")) o.bootstrap_token = env;
  if (o.bootstrap_token.empty()) return Usage("--bootstrap-token (or SPILLWAY_AGENT_BOOTSTRAP_TOKEN) is required");
  try {
    o.hosts = std::stoi(flags["--hosts"]);
    o.gpus_per_host = std::stoi(flags["--gpus-per-host"]);
    o.launch_rate = std::stod(flags["--launch-rate"]);
    o.short_connections = std::stoi(flags["--short-connections"]);
  } catch (const std::exception&) {
    return Usage("--hosts, --gpus-per-host and --launch-rate take numbers");
  }
  if (o.short_connections < 0 || o.short_connections > 10000) return Usage("--short-connections is 0-10000");
  if (o.hosts < 1 || o.hosts > 100000 || o.gpus_per_host < 1 || o.gpus_per_host > 64 || o.launch_rate < 0 ||
      o.launch_rate > 1000)
    return Usage("--hosts is 1-100000, --gpus-per-host 1-64, --launch-rate 0-1000");
  for (auto [flag, into] : {std::pair{"--boot-delay", &o.boot_delay}, std::pair{"--ramp", &o.ramp},
                            std::pair{"--steady", &o.steady}, std::pair{"--launch-hold", &o.launch_hold},
                            std::pair{"--converge-limit", &o.converge_limit},
                            std::pair{"--close-and-wait", &o.close_and_wait},
                            std::pair{"--status-every", &o.status_every}}) {
    const auto d = ParseDuration(flags[flag]);
    if (!d) return Usage(std::string(flag) + " takes a duration such as 10s");
    *into = *d;
  }
  if (o.status_every.count() < 1000) return Usage("--status-every is at least 1s");
  if (flags.count("--gpu-model")) o.gpu_model = flags["--gpu-model"];
  if (flags.count("--region")) o.region = flags["--region"];
  o.zone = flags.count("--zone") ? flags["--zone"] : o.region + "-1a";
  if (flags.count("--hostname-prefix")) o.hostname_prefix = flags["--hostname-prefix"];
  if (flags.count("--tenant-key")) o.tenant_key = flags["--tenant-key"];
  if (flags.count("--instance-type")) o.instance_type = flags["--instance-type"];
  if (flags.count("--pg-dsn")) o.pg_dsn = flags["--pg-dsn"];
  if (flags.count("--report-json")) o.report_json = flags["--report-json"];
  if (o.launch_rate > 0 && o.tenant_key.empty()) return Usage("--launch-rate needs --tenant-key");
  // Up to three sockets a host: ask for the hard limit of descriptors.
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  const int needed = (o.short_connections > 0 ? 1 : 3) * o.hosts + o.short_connections * static_cast<int>(o.apis.size()) + 64;
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < static_cast<rlim_t>(needed))
    std::cerr << "spillway-fleet-sim: warning: " << o.hosts << " hosts need " << needed
              << " descriptors; the limit is " << nofile.rlim_cur << " (ulimit -n)\n";
  try {
    return agent::RunFleetSim(o);
  } catch (const std::exception& e) {
    std::cerr << "spillway-fleet-sim: " << e.what() << "\n";
    return 1;
  }
}
