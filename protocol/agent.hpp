#pragma once
// The agent protocol (docs/protocol.md) in one place: each request and reply as a plain struct with
// its JSON mapping, shared by spillway-agent (which writes requests and reads replies) and the
// apiserver (which reads requests, checking every field, and writes replies). A field added here is
// added for both sides at once.
#include <boost/json/value.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.hpp"

namespace spillway::protocol {

// Bounds the server holds an agent to.
inline constexpr int kMaxGpusPerHost = 64;
inline constexpr std::size_t kMaxSamplesPerBatch = 10000;

// POST /v1/agent/register
struct Gpu {
  std::int64_t index = 0, memory_bytes = 0;
  std::string uuid, model;
};
struct PortRange {
  int from = 0, to = 0;  // inclusive, within 1024..65535
};
struct Registration {
  std::string hostname, region, zone;
  std::vector<Gpu> gpus;  // 1..64, one model, unique indices and uuids
  // What the host offers (all optional on the wire; older agents send none of them).
  std::optional<std::string> driver_version = std::nullopt;  // NVML's nvmlSystemGetDriverVersion
  std::optional<std::string> cuda_version = std::nullopt;    // "12.8": the newest CUDA the driver supports
  std::optional<std::string> public_address = std::nullopt;  // where tenants reach the host (name or IP)
  std::optional<PortRange> port_range = std::nullopt;        // ports the host maps to instances
  bool simulated = false;                     // the GPUs are simulated (demos, tests)
};
struct Registered {
  std::string host_id, host_token;
  std::int64_t sample_interval_ms = 10000, heartbeat_interval_ms = 5000;
  // One more than the highest sample batch_seq committed for this host: an agent that lost its
  // spool (a new disk) starts numbering here, so its batches are not taken for replays.
  std::int64_t next_batch_seq = 0;
};

// GET /v1/agent/assignments
// What to run for an instance (its tenant's launch spec), told to its host's agent only: env values
// and public keys included, ports with the external port the server mapped each to.
struct PortMap {
  int internal = 0, external = 0;
  std::string protocol;  // http | tcp
};
struct VolumeMount {
  std::string volume_id, mount_path;
  int size_gb = 0;
};
struct WorkloadSpec {
  std::optional<std::string> image = std::nullopt;  // none: the launcher's own default
  std::vector<std::string> command;                 // none: the image's own
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> authorized_keys;  // OpenSSH public key lines
  std::vector<PortMap> ports;
  std::vector<VolumeMount> volumes;
  std::optional<int> disk_gb = std::nullopt;
};
struct AssignedInstance {
  std::string id;
  std::string desired_state;  // running | stopped
  std::vector<int> gpu_indices;
  std::optional<TimeMs> preempt_at;
  WorkloadSpec spec = {};
};
struct AssignmentList {
  std::int64_t version = 0;
  std::vector<AssignedInstance> instances;
};

// POST /v1/agent/heartbeat
struct ReportedInstance {
  std::string id, state;  // starting | running | stopped | failed
};
struct Heartbeat {
  std::vector<ReportedInstance> instances;  // sorted by id once parsed
  std::string agent_version;
};
struct HeartbeatAnswer {
  std::int64_t version = 0;
};

// POST /v1/agent/samples
struct Sample {
  TimeMs ts_ms{};                       // the end of the interval the sample covers
  int gpu_index = 0;
  std::optional<std::string> instance_id;  // null: no tenant instance ran on the GPU (never billed)
  std::int64_t interval_ms = 0;
  int util_pct = 0;
  std::int64_t mem_used_bytes = 0, power_mw = 0, energy_mj = 0;
};
struct SampleBatch {
  std::int64_t batch_seq = 0;
  TimeMs sampled_through_ms{};  // every sample of the host with ts_ms <= it is in this batch or before
  std::optional<TimeMs> sent_at_ms;  // the agent's clock when it sent the batch (the server's skew check)
  std::vector<Sample> samples;
};
struct SamplesAnswer {
  std::int64_t accepted = 0;
  bool duplicate = false;
};

// "12.8": MAJOR.MINOR, one or two digits each.
bool IsCudaVersion(std::string_view v);
// A host name or an IP address (letters, digits, '.', '-', ':'), at most 253 characters.
bool IsHostAddress(std::string_view a);

// Writers (both sides).
boost::json::value ToJson(const Registration& r);
boost::json::value ToJson(const Registered& r);
boost::json::value ToJson(const WorkloadSpec& w);
boost::json::value ToJson(const AssignmentList& a);
boost::json::value ToJson(const Heartbeat& h);
boost::json::value ToJson(const HeartbeatAnswer& h);
boost::json::value ToJson(const Sample& s);
boost::json::value ToJson(const SampleBatch& b);
boost::json::value ToJson(const SamplesAnswer& a);

// Readers of what the agent sends: every field checked; throw InvalidInput naming the field
// (a sample's problem is reported as "samples[i].field: ...", see SampleError).
Registration ParseRegistration(const boost::json::value& v);
Heartbeat ParseHeartbeat(const boost::json::value& v);
Sample ParseSample(const boost::json::value& v);
// The envelope and each sample's shape; a bad sample throws SampleError with its index.
SampleBatch ParseSampleBatch(const boost::json::value& v);

// A sample that is not acceptable, at `index` in its batch (422 with error.sample_index). When the
// batch's only faults are samples naming an instance that did not hold their GPU and samples
// covering GPU time already stored, `unheld` and `overlapping` list them all
// (error.unheld_sample_indexes, error.overlapping_sample_indexes): the agent sends the batch again
// with the first unattributed and the second left out.
struct SampleError : std::runtime_error {
  SampleError(std::size_t index, const std::string& message, std::vector<std::size_t> unheld = {},
              std::vector<std::size_t> overlapping = {})
      : std::runtime_error(message), index(index), unheld(std::move(unheld)), overlapping(std::move(overlapping)) {}
  std::size_t index;
  std::vector<std::size_t> unheld, overlapping;
};

// The agent's side of such a 422: when `error_body` lists only repairable samples, repairs `batch`
// in place (the unheld ones lose their instance, the overlapping ones are left out) and says how
// many of each; otherwise changes nothing and returns none (the batch cannot be sent again).
struct SampleRepairs {
  std::int64_t unattributed = 0, left_out = 0;
  bool any() const { return unattributed + left_out > 0; }
};
SampleRepairs RepairSampleBatch(SampleBatch& batch, const std::string& error_body);

// Readers of what the server answers (the agent's side): throw std::exception on a malformed reply.
Registered ParseRegistered(const boost::json::value& v);
WorkloadSpec ParseWorkloadSpec(const boost::json::value& v);
AssignmentList ParseAssignmentList(const boost::json::value& v);
SamplesAnswer ParseSamplesAnswer(const boost::json::value& v);

}  // namespace spillway::protocol
