#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "core/json.hpp"
#include "agent/meter.hpp"
#include "agent/runtime.hpp"
#include "agent/sampler.hpp"
#include "agent/spool.hpp"
#include "protocol/agent.hpp"

namespace spillway::agent {

using GpuInfo = protocol::Gpu;

struct HostOptions {
  std::string api, bootstrap_token, hostname, region, zone;
  std::string ca_file;  // https: the CA certificates (PEM) to trust instead of the system's
  std::vector<GpuInfo> gpus;
  // What the host offers, sent at registration (see protocol::Registration).
  std::optional<std::string> driver_version, cuda_version, public_address;
  std::optional<protocol::PortRange> port_range;
  bool simulated = false;
  // The host's folder under --state-dir: where the agent keeps what the control plane last told it
  // (last_known.json: the sample interval and each instance's GPUs), so that an agent restarted
  // while the apiserver is unreachable meters at the right interval and to the right instances.
  std::string state_dir;
};

// Metering (docs/architecture.md): every sample interval each GPU is read, attributed (Meter),
// appended to the spool and shipped from there in batches.
struct MeteringOptions {
  std::unique_ptr<Spool> spool;     // null: this host does not meter
  SamplerPtr sampler;               // null: simulated, seeded from the hostname
  std::size_t batch_samples = 1000;
};

struct MeteringStats {
  SpoolStats spool;
  std::int64_t batches_shipped = 0, ship_failures = 0, sampler_errors = 0;
  std::int64_t samples_unattributed = 0;    // sent again without their instance (see ShipLoop)
  std::int64_t samples_already_stored = 0;  // left out of a batch sent again: that time was stored
};

// How long the shipper waits after a failed batch: double the last wait (at least 500 ms), but at
// most an eighth of the time since a batch last went through and at most 30 s, so a host whose
// network comes back after a cut resumes within seconds, not after a backoff grown during the cut.
std::chrono::milliseconds ShipBackoff(std::chrono::milliseconds previous, std::chrono::milliseconds since_success);

// One GPU host's side of PROTOCOL.md: registers (again, with a fresh token, when its token stops
// working), long-polls its assignments and applies them to its runtime, and heartbeats the actual
// state of its instances: at the interval the server asked for, and at once when a state changes.
class HostAgent {
 public:
  HostAgent(HostOptions options, RuntimePtr runtime, MeteringOptions metering = {});
  ~HostAgent();
  void Start();
  // Stops the loops and leaves the instances running (a restarted agent takes them up again);
  // returns without waiting for a long poll in flight.
  void Stop();
  // Decommissioning: stops every instance the runtime holds (SIGTERM, then SIGKILL after the
  // runtime's grace) and forgets them. Call after Stop.
  void Drain(std::chrono::milliseconds grace);
  // Deterministic GPU UUIDs for simulated hosts, so a restarted agent is recognised as the same host.
  static std::string SimulatedUuid(const std::string& hostname, int index);
  // A simulated GPU's memory, from its model's name: "H100-80GB" -> 80 GiB; 0 when the name has none.
  static std::int64_t SimulatedMemory(const std::string& model);
  MeteringStats Metering() const;

 private:
  struct Assigned {
    std::string desired;  // running | stopped
    std::vector<int> gpus;
    std::optional<TimeMs> preempt_at;
    protocol::WorkloadSpec spec = {};
  };
  bool Register();
  void PollLoop();
  void HeartbeatLoop();
  void Apply(std::int64_t version, std::map<std::string, Assigned> next);
  void LoadLastKnown();
  void SaveLastKnown();  // under mu_
  std::string Token();
  void Invalidate(const std::string& token);  // a 401: register again before the next call
  void SampleLoop();
  void SampleOnce();
  void ShipLoop();

  HostOptions options_;
  RuntimePtr runtime_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string token_;
  std::string host_id_;
  std::chrono::milliseconds heartbeat_interval_{5000};
  std::int64_t version_ = -1;
  std::map<std::string, Assigned> assigned_;
  // Until the first assignments arrive after a start: each instance's GPUs as last assigned before
  // it (last_known.json), for the meter only (nothing is started or stopped by them).
  std::map<std::string, std::vector<int>> recovered_gpus_;
  bool have_assignments_ = false;
  bool kick_ = false;
  std::atomic<bool> stopping_{false};
  std::thread poll_thread_, heartbeat_thread_;

  // Metering (absent when options had no spool).
  std::unique_ptr<Spool> spool_;
  SamplerPtr sampler_;
  std::unique_ptr<Meter> meter_;
  std::size_t batch_samples_ = 1000;
  std::chrono::milliseconds sample_interval_{10000};  // told at registration
  bool interval_changed_ = false;
  std::mutex sample_mu_;                               // one tick at a time (the loop, or Stop's last)
  std::condition_variable ship_cv_;
  bool ship_kick_ = false;
  bool link_back_ = false;  // a heartbeat was answered after one that was not: ship now
  std::atomic<std::int64_t> batches_shipped_{0}, ship_failures_{0}, sampler_errors_{0}, samples_unattributed_{0},
      samples_already_stored_{0};
  std::thread sample_thread_, ship_thread_;
};

}  // namespace spillway::agent
