#include "provisioning/launch_spec.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <set>

#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/sql.hpp"
#include "core/text.hpp"
#include "provisioning/sealed_env.hpp"
#include "protocol/agent.hpp"

namespace spillway {
namespace {

const Statement kSetInstanceSpec{"set_instance_spec", R"sql(
UPDATE instances SET image = $2, command = $3::text[], env = $4::jsonb, ssh_key_ids = $5::text[],
       authorized_keys = $6::text[], disk_gb = $7::integer, min_cuda = $8
WHERE id = $1)sql"};
const Statement kTenantKey{"launch_tenant_ssh_key", "SELECT public_key FROM ssh_keys WHERE tenant_id = $1 AND id = $2"};
const Statement kInsertPort{"insert_instance_port",
                            "INSERT INTO instance_ports (instance_id, internal_port, protocol) VALUES ($1, $2, $3)"};
const Statement kLockLaunchVolume{"lock_launch_volume",
                                  "SELECT region, attached_instance_id FROM volumes "
                                  "WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL FOR UPDATE"};
const Statement kAttachVolume{"attach_volume",
                              "UPDATE volumes SET attached_instance_id = $2 WHERE id = $1 AND attached_instance_id IS NULL"};
const Statement kInsertMount{"insert_instance_volume",
                             "INSERT INTO instance_volumes (instance_id, volume_id, mount_path) VALUES ($1, $2, $3)"};
const Statement kInstanceSpec{"instance_spec", R"sql(
SELECT image, to_json(command)::text AS command, env::text AS env, to_json(authorized_keys)::text AS authorized_keys,
       disk_gb
FROM instances WHERE id = $1)sql"};
const Statement kInstancePorts{"instance_ports_of",
                               "SELECT internal_port, protocol, external_port, released_at IS NULL AS live "
                               "FROM instance_ports WHERE instance_id = $1 ORDER BY internal_port"};
const Statement kInstanceMounts{"instance_mounts_of", R"sql(
SELECT m.volume_id, m.mount_path, v.size_gb FROM instance_volumes m JOIN volumes v ON v.id = m.volume_id
WHERE m.instance_id = $1 ORDER BY m.mount_path)sql"};
// The lowest external ports of the host's range with no live mapping.
const Statement kPickPorts{"pick_free_ports", R"sql(
SELECT p AS port FROM hosts h, generate_series(h.port_range_from, h.port_range_to) AS p
WHERE h.id = $1 AND NOT EXISTS (SELECT 1 FROM instance_ports m
                                WHERE m.host_id = $1 AND m.external_port = p AND m.released_at IS NULL)
ORDER BY p LIMIT $2)sql"};
const Statement kUnmappedPorts{"unmapped_instance_ports",
                               "SELECT internal_port FROM instance_ports WHERE instance_id = $1 AND host_id IS NULL "
                               "ORDER BY internal_port"};
const Statement kMapPort{"map_instance_port",
                         "UPDATE instance_ports SET host_id = $3, external_port = $4 "
                         "WHERE instance_id = $1 AND internal_port = $2"};
const Statement kReleasePorts{"release_instance_ports",
                              "UPDATE instance_ports SET released_at = now() "
                              "WHERE instance_id = $1 AND host_id IS NOT NULL AND released_at IS NULL"};
const Statement kDetachVolumes{"detach_instance_volumes",
                               "UPDATE volumes SET attached_instance_id = NULL WHERE attached_instance_id = $1"};

// A text[] column read as to_json(col)::text.
std::vector<std::string> StringsOf(const std::string& json_array) {
  return boost::json::value_to<std::vector<std::string>>(boost::json::parse(json_array));
}

}  // namespace

namespace {
bool IsLower(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// [a-z0-9]+ ((. | _ | __ | -+) [a-z0-9]+)*
bool IsPathComponent(std::string_view c) {
  if (c.empty() || !IsLower(c.front()) || !IsLower(c.back())) return false;
  for (std::size_t i = 0; i < c.size();) {
    if (IsLower(c[i])) {
      ++i;
      continue;
    }
    const std::size_t sep = i;
    while (i < c.size() && !IsLower(c[i])) ++i;
    const std::string_view s = c.substr(sep, i - sep);
    if (!(s == "." || s == "_" || s == "__" || s.find_first_not_of('-') == std::string_view::npos)) return false;
  }
  return true;
}

// host[:port], host being dot-separated labels of letters, digits and inner '-'.
bool IsDomain(std::string_view d) {
  if (const auto colon = d.find(':'); colon != std::string_view::npos) {
    const std::string_view port = d.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos) return false;
    d = d.substr(0, colon);
  }
  if (d.empty()) return false;
  std::size_t start = 0;
  while (start <= d.size()) {
    const std::size_t end = std::min(d.find('.', start), d.size());
    const std::string_view label = d.substr(start, end - start);
    if (label.empty() || !IsAlnum(label.front()) || !IsAlnum(label.back())) return false;
    for (char c : label)
      if (!IsAlnum(c) && c != '-') return false;
    start = end + 1;
  }
  return true;
}
}  // namespace

bool IsImageReference(std::string_view ref) {
  // distribution's reference grammar: [domain/]path[:tag][@algorithm:hex]
  if (ref.empty() || ref.size() > 255) return false;
  if (const auto at = ref.find('@'); at != std::string_view::npos) {
    const std::string_view digest = ref.substr(at + 1);
    const auto colon = digest.find(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    const std::string_view algorithm = digest.substr(0, colon), hex = digest.substr(colon + 1);
    if (!std::isalpha(static_cast<unsigned char>(algorithm.front()))) return false;
    for (char c : algorithm)
      if (!IsAlnum(c) && c != '-' && c != '_' && c != '+' && c != '.') return false;
    if (hex.size() < 32 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos) return false;
    ref = ref.substr(0, at);
  }
  const auto slash = ref.rfind('/');
  if (const auto colon = ref.rfind(':'); colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    const std::string_view tag = ref.substr(colon + 1);
    if (tag.empty() || tag.size() > 128 || !(IsAlnum(tag.front()) || tag.front() == '_')) return false;
    for (char c : tag)
      if (!IsAlnum(c) && c != '_' && c != '.' && c != '-') return false;
    ref = ref.substr(0, colon);
  }
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    const std::size_t end = ref.find('/', start);
    parts.push_back(ref.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  std::size_t first = 0;
  // A first component is a registry only if it has a '.' or a port or is "localhost".
  if (parts.size() > 1 && (parts[0].find_first_of(".:") != std::string_view::npos || parts[0] == "localhost")) {
    if (!IsDomain(parts[0])) return false;
    first = 1;
  }
  for (std::size_t i = first; i < parts.size(); ++i)
    if (!IsPathComponent(parts[i])) return false;
  return true;
}

bool IsEnvName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  if (!(std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_')) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

bool IsReservedEnvName(std::string_view name) {
  return name.rfind("SPILLWAY_", 0) == 0 || name == "CUDA_VISIBLE_DEVICES" || name == "NVIDIA_VISIBLE_DEVICES";
}

bool IsMountPath(std::string_view path) {
  if (path.size() < 2 || path.size() > 255 || path[0] != '/' || path.back() == '/') return false;
  std::size_t start = 1;
  while (start <= path.size()) {
    const std::size_t end = std::min(path.find('/', start), path.size());
    const std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    for (char c : part)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
    start = end + 1;
  }
  return true;
}

bool IsSystemPath(std::string_view path) {
  if (path.empty() || path[0] != '/') return false;
  const std::string_view top = path.substr(1, path.find('/', 1) == std::string_view::npos ? std::string_view::npos
                                                                                          : path.find('/', 1) - 1);
  static constexpr std::string_view kSystem[] = {"", "proc", "sys", "dev", "etc", "usr", "bin", "sbin", "boot", "run"};
  return std::find(std::begin(kSystem), std::end(kSystem), top) != std::end(kSystem) || top.rfind("lib", 0) == 0;
}

bool CudaAtLeast(std::string_view have, std::string_view need) {
  if (!protocol::IsCudaVersion(have) || !protocol::IsCudaVersion(need)) return false;
  auto parts = [](std::string_view v) {
    const auto dot = v.find('.');
    return std::pair<int, int>{std::stoi(std::string(v.substr(0, dot))), std::stoi(std::string(v.substr(dot + 1)))};
  };
  return parts(have) >= parts(need);
}

std::vector<PortRequest> PortsToMap(const LaunchSpec& spec) {
  std::vector<PortRequest> ports = spec.ports;
  const bool has_ssh = std::any_of(ports.begin(), ports.end(), [](const PortRequest& p) { return p.port == kSshPort; });
  if (!spec.ssh_key_ids.empty() && !has_ssh) ports.push_back({kSshPort, "tcp"});
  std::sort(ports.begin(), ports.end(), [](const PortRequest& a, const PortRequest& b) { return a.port < b.port; });
  return ports;
}

void CheckLaunchSpec(const LaunchSpec& s) {
  if (s.image && !IsImageReference(*s.image))
    throw InvalidInput("image: not an OCI image reference (such as \"docker.io/library/ubuntu:24.04\")");
  if (s.command.size() > kMaxCommandArgs)
    throw InvalidInput("command: at most " + std::to_string(kMaxCommandArgs) + " arguments");
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < s.command.size(); ++i) {
    if (s.command[i].find('\0') != std::string::npos)
      throw InvalidInput("command[" + std::to_string(i) + "]: must not contain NUL");
    bytes += s.command[i].size();
  }
  if (bytes > kMaxCommandBytes) throw InvalidInput("command: at most " + std::to_string(kMaxCommandBytes) + " bytes in all");
  if (s.env.size() > kMaxEnvVars) throw InvalidInput("env: at most " + std::to_string(kMaxEnvVars) + " variables");
  for (const auto& [name, value] : s.env) {
    if (!IsEnvName(name)) throw InvalidInput("env." + name + ": a name is letters, digits and '_', not starting with a digit");
    if (IsReservedEnvName(name)) throw InvalidInput("env." + name + ": set by the host, not by the launch");
    if (value.size() > kMaxEnvValueBytes)
      throw InvalidInput("env." + name + ": at most " + std::to_string(kMaxEnvValueBytes) + " bytes");
    if (!IsOneLineText(value))
      throw InvalidInput("env." + name +
                         ": must be one line of text: no control character (NUL, tab, line breaks, U+0085) and no "
                         "U+2028 or U+2029");
  }
  if (s.ssh_key_ids.size() > kMaxSshKeys) throw InvalidInput("ssh_key_ids: at most " + std::to_string(kMaxSshKeys) + " keys");
  std::set<std::string> seen;
  for (const auto& k : s.ssh_key_ids) {
    if (!IsValidId(k, "ssh")) throw InvalidInput("ssh_key_ids: " + k + " is not an SSH key id");
    if (!seen.insert(k).second) throw InvalidInput("ssh_key_ids: " + k + " is listed twice");
  }
  if (s.ports.size() > kMaxPorts) throw InvalidInput("ports: at most " + std::to_string(kMaxPorts) + " ports");
  std::set<int> ports;
  for (std::size_t i = 0; i < s.ports.size(); ++i) {
    const auto& p = s.ports[i];
    const std::string at = "ports[" + std::to_string(i) + "]";
    if (p.port < 1 || p.port > 65535) throw InvalidInput(at + ".port: must be within 1..65535");
    if (p.protocol != "http" && p.protocol != "tcp") throw InvalidInput(at + ".protocol: must be http or tcp");
    if (!ports.insert(p.port).second) throw InvalidInput("ports: port " + std::to_string(p.port) + " is listed twice");
  }
  if (s.disk_gb && (*s.disk_gb < 1 || *s.disk_gb > 65536)) throw InvalidInput("disk_gb: must be within 1..65536");
  if (s.volumes.size() > kMaxVolumes) throw InvalidInput("volumes: at most " + std::to_string(kMaxVolumes) + " volumes");
  std::set<std::string> volumes, paths;
  for (std::size_t i = 0; i < s.volumes.size(); ++i) {
    const auto& v = s.volumes[i];
    const std::string at = "volumes[" + std::to_string(i) + "]";
    if (!IsValidId(v.volume_id, "vol")) throw InvalidInput(at + ".volume_id: " + v.volume_id + " is not a volume id");
    if (!IsMountPath(v.mount_path))
      throw InvalidInput(at + ".mount_path: an absolute path of letters, digits, '.', '_' and '-' components, not /");
    if (IsSystemPath(v.mount_path))
      throw InvalidInput(at + ".mount_path: " + v.mount_path +
                         " is the system's: a volume is not mounted on or under /proc, /sys, /dev, /etc, /usr, /bin, "
                         "/sbin, /lib*, /boot or /run");
    if (!volumes.insert(v.volume_id).second) throw InvalidInput("volumes: " + v.volume_id + " is listed twice");
    if (!paths.insert(v.mount_path).second) throw InvalidInput("volumes: " + v.mount_path + " is mounted twice");
  }
  if (s.min_cuda && !protocol::IsCudaVersion(*s.min_cuda))
    throw InvalidInput("min_cuda: a CUDA version such as \"12.8\"");
}

std::vector<std::string> CheckLaunchReferences(Tx& tx, const std::string& tenant_id, const std::string& region,
                                               const LaunchSpec& spec) {
  std::vector<std::string> keys;
  for (const auto& id : spec.ssh_key_ids) {
    const auto r = tx.exec_prepared(kTenantKey.name, tenant_id, id);
    if (r.empty()) throw InvalidInput("ssh_key_ids: this tenant has no SSH key " + id);
    keys.push_back(r[0]["public_key"].as<std::string>());
  }
  // Volumes in id order, so concurrent launches naming the same volumes lock them in one order.
  std::vector<VolumeMount> mounts = spec.volumes;
  std::sort(mounts.begin(), mounts.end(), [](const auto& a, const auto& b) { return a.volume_id < b.volume_id; });
  for (const auto& m : mounts) {
    const auto r = tx.exec_prepared(kLockLaunchVolume.name, tenant_id, m.volume_id);
    if (r.empty()) throw InvalidInput("volumes: this tenant has no volume " + m.volume_id);
    const std::string volume_region = r[0]["region"].as<std::string>();
    if (volume_region != region)
      throw ApiError(409, "volume_region_mismatch",
                     "volume " + m.volume_id + " is in " + volume_region + "; the instance is launched in " + region);
    if (!r[0]["attached_instance_id"].is_null())
      throw ApiError(409, "volume_attached", "volume " + m.volume_id + " is attached to instance " +
                                                 r[0]["attached_instance_id"].as<std::string>());
  }
  return keys;
}

void SaveLaunchSpec(Tx& tx, const std::string& instance_id, const LaunchSpec& spec,
                    const std::vector<std::string>& authorized_keys, const SecretBox& secrets) {
  const std::string env = SealEnv(secrets, instance_id, spec.env);
  const auto disk = TextOf(spec.disk_gb ? std::optional<std::int64_t>(*spec.disk_gb) : std::nullopt);
  tx.exec_prepared(kSetInstanceSpec.name, instance_id, Nullable(spec.image), TextArrayLiteral(spec.command),
                   env, TextArrayLiteral(spec.ssh_key_ids), TextArrayLiteral(authorized_keys),
                   Nullable(disk), Nullable(spec.min_cuda));
  for (const auto& p : PortsToMap(spec)) tx.exec_prepared(kInsertPort.name, instance_id, p.port, p.protocol);
  for (const auto& m : spec.volumes) {
    // Checked and locked by CheckLaunchReferences; the column is the guard whatever the code does.
    if (tx.exec_prepared(kAttachVolume.name, m.volume_id, instance_id).affected_rows() != 1)
      throw ApiError(409, "volume_attached", "volume " + m.volume_id + " is attached to another instance");
    tx.exec_prepared(kInsertMount.name, instance_id, m.volume_id, m.mount_path);
  }
}

InstanceAccess AccessFromJson(std::optional<std::string> image, std::optional<std::string> min_cuda,
                              const std::string& command, const std::string& env_names, const std::string& ssh_key_ids,
                              std::optional<std::int64_t> disk_gb, std::optional<std::string> address,
                              const std::string& ports, const std::string& volumes) {
  InstanceAccess a;
  a.image = std::move(image);
  a.min_cuda = std::move(min_cuda);
  a.command = StringsOf(command);
  a.env_names = StringsOf(env_names);
  a.ssh_key_ids = StringsOf(ssh_key_ids);
  if (disk_gb) a.disk_gb = static_cast<int>(*disk_gb);
  a.address = std::move(address);
  if (const auto v = boost::json::parse(ports); v.is_array())
    for (const auto& p : v.as_array()) {
      const auto& o = p.as_object();
      const int internal = static_cast<int>(o.at("port").as_int64());
      const std::string protocol(o.at("protocol").as_string());
      a.ports.push_back({internal, protocol});
      if (!o.at("external").is_null()) a.mappings.push_back({internal, static_cast<int>(o.at("external").as_int64()), protocol});
    }
  if (const auto v = boost::json::parse(volumes); v.is_array())
    for (const auto& m : v.as_array())
      a.volumes.push_back({std::string(m.at("volume_id").as_string()), std::string(m.at("mount_path").as_string())});
  // Shown in a stable order (the statement leaves it to us): names bytewise, ports by number,
  // volumes by mount path.
  std::sort(a.env_names.begin(), a.env_names.end());
  std::sort(a.ports.begin(), a.ports.end(), [](const auto& x, const auto& y) { return x.port < y.port; });
  std::sort(a.mappings.begin(), a.mappings.end(), [](const auto& x, const auto& y) { return x.internal < y.internal; });
  std::sort(a.volumes.begin(), a.volumes.end(), [](const auto& x, const auto& y) { return x.mount_path < y.mount_path; });
  return a;
}

void AllocatePorts(pqxx::transaction_base& tx, const std::string& instance_id, const std::string& host_id) {
  std::vector<int> internal;
  for (const auto& r : tx.exec_prepared(kUnmappedPorts.name, instance_id)) internal.push_back(r["internal_port"].as<int>());
  if (internal.empty()) return;
  std::vector<int> external;
  for (const auto& r : tx.exec_prepared(kPickPorts.name, host_id, static_cast<int>(internal.size())))
    external.push_back(r["port"].as<int>());
  if (external.size() < internal.size())
    throw ApiError(409, "insufficient_capacity", "host " + host_id + " has " + std::to_string(external.size()) +
                                                     " free ports to map; " + std::to_string(internal.size()) + " asked");
  for (std::size_t i = 0; i < internal.size(); ++i)
    tx.exec_prepared(kMapPort.name, instance_id, internal[i], host_id, external[i]);
}

void ReleaseInstanceResources(pqxx::transaction_base& tx, const std::string& instance_id) {
  tx.exec_prepared(kReleasePorts.name, instance_id);
  tx.exec_prepared(kDetachVolumes.name, instance_id);
}

protocol::WorkloadSpec LoadWorkloadSpec(Tx& tx, const std::string& instance_id, const SecretBox& secrets) {
  protocol::WorkloadSpec s;
  const auto rows = tx.exec_prepared(kInstanceSpec.name, instance_id);
  if (rows.empty()) return s;
  const auto& r = rows[0];
  s.image = TextFrom(r["image"]);
  s.command = StringsOf(r["command"].as<std::string>());
  s.env = OpenEnv(secrets, instance_id, r["env"].as<std::string>());  // by name, as the API lists them
  s.authorized_keys = StringsOf(r["authorized_keys"].as<std::string>());
  if (const auto d = IntFrom(r["disk_gb"])) s.disk_gb = static_cast<int>(*d);
  for (const auto& p : tx.exec_prepared(kInstancePorts.name, instance_id))
    if (!p["external_port"].is_null() && p["live"].as<bool>())
      s.ports.push_back({p["internal_port"].as<int>(), p["external_port"].as<int>(), p["protocol"].as<std::string>()});
  for (const auto& m : tx.exec_prepared(kInstanceMounts.name, instance_id))
    s.volumes.push_back({m["volume_id"].as<std::string>(), m["mount_path"].as<std::string>(), m["size_gb"].as<int>()});
  return s;
}

}  // namespace spillway
