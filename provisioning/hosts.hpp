#pragma once
// GPU hosts: the store (rows mapped to Host by column name), registration and the agent's view of
// its assignments.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"
#include "protocol/agent.hpp"
#include "provisioning/words.hpp"

namespace spillway {
class SecretBox;

struct Host {
  std::string id, hostname, region, zone, gpu_model;
  std::int64_t gpu_count = 0;
  std::string state, health;  // active|draining|disabled; up|down
  std::optional<std::string> agent_version, down_reason;
  std::optional<TimeMs> last_heartbeat, registered_at, down_since;
  std::int64_t gpus_allocated = 0, live_instances = 0;
  // What it offers, as its agent said at registration.
  std::optional<std::string> driver_version, cuda_version, public_address;
  std::optional<std::int64_t> port_range_from, port_range_to;
  bool simulated = false;
};
struct HostGpu {
  int index = 0;
  std::string uuid, model;
  std::int64_t memory_bytes = 0;
  std::optional<std::string> instance_id;
};
struct HostFilter {
  std::string region, gpu_model, state;  // "" = any
  std::string after;
  int limit = 50;
};
std::vector<Host> ListHosts(Tx& tx, const HostFilter& filter);
std::optional<Host> FindHost(Tx& tx, const std::string& id);
std::vector<HostGpu> HostGpus(Tx& tx, const std::string& id);
// Operator's state (active, draining, disabled); false when there is no such host.
bool SetHostState(Tx& tx, const std::string& id, const std::string& state);
// A host token ("spwh_…", made at registration) split into the host id and the secret.
struct HostToken {
  std::string id, secret;
};
std::optional<HostToken> ParseHostToken(const std::string& credential);
// For authentication: the hex SHA-256 of the host's current token.
std::optional<std::string> HostTokenHash(Tx& tx, const std::string& id);

using GpuInfo = protocol::Gpu;
using Registration = protocol::Registration;  // one model, unique indices and uuids (ParseRegistration)
struct Registered {
  std::string host_id, token;
  bool existing = false;  // registered again: the old token is revoked, GPUs unchanged
};
// Registers a host (or registers it again, rotating its token, when the hostname exists with the
// same GPUs). Throws ApiError 409 host_conflict when the GPUs belong elsewhere.
Registered RegisterHost(Tx& tx, const Registration& registration, TimeMs now);

struct Assignment {
  std::string instance_id;
  InstanceState state = InstanceState::kProvisioning;
  std::vector<int> gpu_indices;
  std::optional<TimeMs> preempt_at;
  protocol::WorkloadSpec spec = {};  // what to run (for one being stopped: empty)
};
struct Assignments {
  std::int64_t version = 0;
  std::vector<Assignment> instances;
};
std::int64_t HostAssignmentVersion(Tx& tx, const std::string& host_id);
// The instances the host should be running (or stopping), with the version they are as of.
Assignments HostAssignments(Tx& tx, const std::string& host_id, const SecretBox& secrets);

}  // namespace spillway
