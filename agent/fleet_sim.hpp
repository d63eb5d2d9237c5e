#pragma once
// A fleet of simulated GPU hosts in one process and one thread (docs/fleet-scale.md): each host
// speaks the real agent protocol (protocol/agent.hpp) over connections of its own — it registers,
// long-polls its assignments, runs what it is told on a simulated runtime, heartbeats at the
// interval it was given and at once on a change, and meters its GPUs (the agent's Meter and
// SimulatedSampler) into sample batches it ships every sample interval, sent again with the same
// batch_seq until stored. Event-driven on Asio: a host costs a few sockets and timers, not
// threads, so 10,000 hosts fit beside the control plane they test.
//
// It also measures, from the hosts' side: how long the storm of registrations takes to converge
// (every host registered and heard), and then over a steady window each call's latency and status,
// the time from a tenant's launch to its host seeing the instance, and what it was told by the
// processes it watches (cores, RSS) and by PostgreSQL (WAL, hosts down, samples stored).
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace spillway::agent {

struct FleetSimOptions {
  // Apiservers, http://HOST:PORT. Host i talks to apis[i % n] first and moves to the next one when
  // its apiserver cannot be reached (a replica killed mid-run).
  std::vector<std::string> apis;
  std::string bootstrap_token;
  int hosts = 1, gpus_per_host = 8;
  std::string gpu_model = "H100-80GB", region = "sim", zone, hostname_prefix = "sim";
  std::string cuda_version = "12.8";
  std::chrono::milliseconds boot_delay{2000};
  // Each host's long poll holds a connection of its own. Its other calls go over connections of its
  // own too when short_connections is 0 (registration and heartbeats over one, samples over
  // another, shipped beside them), as spillway-agent's do; otherwise over a pool of this many per
  // apiserver, shared by every host, as agents behind an L7 load balancer with upstream keep-alive
  // (nginx's `keepalive`) reach it: 10,000 hosts then fit under a 20,000-descriptor limit on both
  // sides. In the pool a heartbeat goes before every other waiting call.
  int short_connections = 0;
  // Hosts start over this long (0: all at once, the storm).
  std::chrono::milliseconds ramp{0};

  // Measuring (all optional). After the fleet converges, `steady` long: a tenant (tenant_key)
  // launches `launch_rate` instances a second of `instance_type` in `region` and terminates each
  // `launch_hold` after its host saw it; then the report.
  std::chrono::milliseconds steady{0};
  std::chrono::milliseconds converge_limit{std::chrono::minutes(5)};
  std::string tenant_key, instance_type = "h100.1x";
  double launch_rate = 0;
  std::chrono::milliseconds launch_hold{std::chrono::seconds(10)};
  // Processes whose CPU and memory the report shows: name -> pid (a PostgreSQL postmaster's
  // children are counted with it).
  std::vector<std::pair<std::string, int>> watch;
  std::string pg_dsn;  // for WAL bytes, hosts down, failed instances and stored samples
  // The apiservers' admin listeners (http://HOST:PORT): the report counts the hosts they marked down
  // during the run (spillway_hosts_marked_down_total), as exactly as the replicas that survive know.
  std::vector<std::string> metrics;
  // After the report: close every connection, wait this long, and report the watched processes'
  // memory again (does it come back?). 0: skip.
  std::chrono::milliseconds close_and_wait{0};
  std::string report_json;  // also write the report here

  // Without `steady`: run until SIGINT/SIGTERM, a status line every status_every.
  std::chrono::milliseconds status_every{std::chrono::seconds(30)};
};

// Runs the fleet; returns the process's exit code (0, or 1 when a measured run did not converge or
// found hosts down at any moment, failed instances or lost samples).
int RunFleetSim(const FleetSimOptions& options);

}  // namespace spillway::agent
