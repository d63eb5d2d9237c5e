#pragma once
// What a tenant runs on an instance and how it gets in: the launch spec (image, command, env, SSH
// keys, ports, disk, volumes, minimum CUDA), its rules, and its store — the rows written at launch,
// the ports allocated on the host at placement, and what is released when the instance ends.
#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/db_fwd.hpp"
#include "protocol/agent.hpp"

namespace spillway {
class SecretBox;

// Bounds a launch spec is held to (docs/protocol.md repeats them).
inline constexpr std::size_t kMaxCommandArgs = 256, kMaxCommandBytes = 64 * 1024;
inline constexpr std::size_t kMaxEnvVars = 128, kMaxEnvValueBytes = 32 * 1024;
inline constexpr std::size_t kMaxSshKeys = 16, kMaxPorts = 16, kMaxVolumes = 8;
inline constexpr int kSshPort = 22;
inline constexpr const char* kSshUser = "root";

struct PortRequest {
  int port = 0;
  std::string protocol;  // http | tcp
};
struct VolumeMount {
  std::string volume_id, mount_path;
};
struct LaunchSpec {
  std::optional<std::string> image;  // an OCI reference; none: the host's launcher decides
  std::vector<std::string> command;  // none: the image's own
  std::vector<std::pair<std::string, std::string>> env;  // name, value (values never shown back)
  std::vector<std::string> ssh_key_ids;
  std::vector<PortRequest> ports;  // as asked; 22/tcp is added when SSH keys are given
  std::optional<int> disk_gb;
  std::vector<VolumeMount> volumes;
  std::optional<std::string> min_cuda;  // "12.8"
};

// Rules, each pure. An OCI image reference ([registry[:port]/]path[:tag][@digest]) as
// distribution's reference grammar has it, at most 255 characters.
bool IsImageReference(std::string_view ref);
// A POSIX environment variable name: [A-Za-z_][A-Za-z0-9_]*, at most 128 characters.
bool IsEnvName(std::string_view name);
// Names the host sets itself (the GPUs the instance sees, the agent's own variables).
bool IsReservedEnvName(std::string_view name);
// An absolute, normalised path of [A-Za-z0-9._-] components, not "/", at most 255 characters.
bool IsMountPath(std::string_view path);
// `/` itself, or on or under a directory the container's system lives in (/proc, /sys, /dev, /etc,
// /usr, /bin, /sbin, /lib*, /boot, /run): no volume is mounted there.
bool IsSystemPath(std::string_view path);
// Compares "12.8"-style versions; false when either is not one.
bool CudaAtLeast(std::string_view have, std::string_view need);
// The ports an instance is mapped: those asked for, and 22/tcp when it takes SSH keys.
std::vector<PortRequest> PortsToMap(const LaunchSpec& spec);
// Throws InvalidInput naming the field for the first rule a spec breaks (what the parser cannot
// see: duplicates, reserved names, sizes).
void CheckLaunchSpec(const LaunchSpec& spec);

// The store.
// Checks what the spec names, before placement: its SSH keys must be the tenant's (422 naming the
// id otherwise), its volumes the tenant's, in the region (409 volume_region_mismatch naming both
// regions) and detached (409 volume_attached). The volumes stay locked to the end of the
// transaction (lock order: the tenant, its volumes, then the pool's hosts). Returns the public
// keys to write.
std::vector<std::string> CheckLaunchReferences(Tx& tx, const std::string& tenant_id, const std::string& region,
                                               const LaunchSpec& spec);
// Writes the spec of the new instance: its columns, the ports to map, and its volumes, attached
// to it here, in the launch's transaction.
// Env values are sealed with `secrets` (provisioning/sealed_env).
void SaveLaunchSpec(Tx& tx, const std::string& instance_id, const LaunchSpec& spec,
                    const std::vector<std::string>& authorized_keys, const SecretBox& secrets);

struct PortMapping {
  int internal = 0, external = 0;
  std::string protocol;
};
// What an instance's API view shows beyond its row: env names, keys, ports, volumes, and where
// it is reached once placed.
struct InstanceAccess {
  std::optional<std::string> image, min_cuda;
  std::vector<std::string> command, env_names, ssh_key_ids;
  std::vector<PortRequest> ports;
  std::optional<int> disk_gb;
  std::vector<VolumeMount> volumes;
  std::optional<std::string> address;  // the host's public address (or its hostname)
  std::vector<PortMapping> mappings;   // live ones only
};
// Reads the instance store's JSON columns for it (see instances.cpp): env names, ports with their
// live external port, volumes.
InstanceAccess AccessFromJson(std::optional<std::string> image, std::optional<std::string> min_cuda,
                              const std::string& command, const std::string& env_names, const std::string& ssh_key_ids,
                              std::optional<std::int64_t> disk_gb, std::optional<std::string> address,
                              const std::string& ports, const std::string& volumes);

// Maps each of the instance's ports to a free external port of host_id's range, lowest first.
// The caller holds the host's row lock; the unique index is the guard whatever the code does.
// Throws ApiError 409 insufficient_capacity when the range has too few left.
void AllocatePorts(pqxx::transaction_base& tx, const std::string& instance_id, const std::string& host_id);
// At the end of an instance: its port mappings are released and its volumes detached.
void ReleaseInstanceResources(pqxx::transaction_base& tx, const std::string& instance_id);

// What the host's agent is told to run (assignments), env values and public keys included.
// Env values are opened with `secrets` (provisioning/sealed_env).
protocol::WorkloadSpec LoadWorkloadSpec(Tx& tx, const std::string& instance_id, const SecretBox& secrets);

}  // namespace spillway
