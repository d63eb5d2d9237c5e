#include "provisioning/hosts.hpp"

#include "provisioning/launch_spec.hpp"

#include "accounts/audit.hpp"
#include <algorithm>

#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/sql.hpp"
#include "provisioning/words.hpp"

namespace spillway {
namespace {

#define SPW_HOST_COLUMNS                                                                                 \
  "h.id, h.hostname, h.region, h.zone, h.gpu_model, h.gpu_count, h.state, h.health, h.agent_version, "  \
  "h.down_reason, h.driver_version, h.cuda_version, h.public_address, h.port_range_from, h.port_range_to, "   \
  "h.simulated, " SPW_EPOCH_MS("h.last_heartbeat") " AS last_heartbeat_ms, " SPW_EPOCH_MS(            \
      "h.registered_at") " AS registered_ms, " SPW_EPOCH_MS("h.down_since") " AS down_since_ms, "       \
  "(SELECT count(*) FROM gpu_allocations a WHERE a.host_id = h.id) AS gpus_allocated, "                  \
  "(SELECT count(*) FROM instances i WHERE i.host_id = h.id AND instance_is_live(i.state)) AS live_instances"

const Statement kListHosts{"list_hosts",
                           "SELECT " SPW_HOST_COLUMNS " FROM hosts h WHERE h.id > $1 AND ($2 = '' OR h.region = $2) "
                           "AND ($3 = '' OR h.gpu_model = $3) AND ($4 = '' OR h.state = $4) ORDER BY h.id LIMIT $5"};
const Statement kGetHost{"get_host", "SELECT " SPW_HOST_COLUMNS " FROM hosts h WHERE h.id = $1"};
const Statement kHostGpus{"host_gpus",
                          "SELECT g.gpu_index, g.uuid, g.model, g.memory_bytes, a.instance_id FROM gpus g "
                          "LEFT JOIN gpu_allocations a ON a.host_id = g.host_id AND a.gpu_index = g.gpu_index "
                          "WHERE g.host_id = $1 ORDER BY g.gpu_index"};
const Statement kSetHostState{"set_host_state", "UPDATE hosts SET state = $2 WHERE id = $1 RETURNING id"};
const Statement kHostToken{"auth_host", "SELECT token_hash FROM hosts WHERE id = $1"};
const Statement kHostByName{"host_by_name",
                            "SELECT h.id, ARRAY(SELECT uuid FROM gpus g WHERE g.host_id = h.id ORDER BY uuid)::text "
                            "AS uuids FROM hosts h WHERE h.hostname = $1 FOR UPDATE"};
const Statement kInsertHost{"insert_host", R"sql(
INSERT INTO hosts (id, hostname, region, zone, gpu_model, gpu_count, token_hash, last_heartbeat, driver_version,
                   cuda_version, public_address, port_range_from, port_range_to, simulated)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz, $9, $10, $11, $12::integer, $13::integer, $14))sql"};
const Statement kGpuTaken{"gpu_taken", "SELECT host_id FROM gpus WHERE uuid = $1"};
const Statement kInsertGpu{"insert_gpu",
                           "INSERT INTO gpus (host_id, gpu_index, uuid, model, memory_bytes) VALUES ($1, $2, $3, $4, $5)"};
const Statement kRotateHost{"rotate_host_token", R"sql(
UPDATE hosts SET token_hash = $2, region = $3, zone = $4, health = 'up', down_since = NULL, down_reason = NULL,
       last_heartbeat = $5::timestamptz, assignment_version = assignment_version + 1,
       driver_version = $6, cuda_version = $7, public_address = $8, port_range_from = $9::integer,
       port_range_to = $10::integer, simulated = $11
WHERE id = $1)sql"};
const Statement kHostVersion{"host_version", "SELECT assignment_version FROM hosts WHERE id = $1"};
const Statement kAssignments{"host_assignments", R"sql(
SELECT id, state, gpu_indices::text AS gpu_indices, )sql" SPW_EPOCH_MS("preempt_at") R"sql( AS preempt_ms
FROM instances
WHERE host_id = $1 AND )sql" SPW_ON_HOST("state") " ORDER BY id"};

Host HostFrom(const pqxx::row& r) {
  Host h;
  h.id = r["id"].as<std::string>();
  h.hostname = r["hostname"].as<std::string>();
  h.region = r["region"].as<std::string>();
  h.zone = r["zone"].as<std::string>();
  h.gpu_model = r["gpu_model"].as<std::string>();
  h.gpu_count = r["gpu_count"].as<std::int64_t>();
  h.state = r["state"].as<std::string>();
  h.health = r["health"].as<std::string>();
  h.agent_version = TextFrom(r["agent_version"]);
  h.down_reason = TextFrom(r["down_reason"]);
  h.driver_version = TextFrom(r["driver_version"]);
  h.cuda_version = TextFrom(r["cuda_version"]);
  h.public_address = TextFrom(r["public_address"]);
  h.port_range_from = IntFrom(r["port_range_from"]);
  h.port_range_to = IntFrom(r["port_range_to"]);
  h.simulated = r["simulated"].as<bool>();
  h.last_heartbeat = TimeFrom(r["last_heartbeat_ms"]);
  h.registered_at = TimeFrom(r["registered_ms"]);
  h.down_since = TimeFrom(r["down_since_ms"]);
  h.gpus_allocated = r["gpus_allocated"].as<std::int64_t>();
  h.live_instances = r["live_instances"].as<std::int64_t>();
  return h;
}

// A host token: "spwh_<the host id's 26 chars>_<43 chars of a 256-bit secret>"; the server keeps
// only the hex SHA-256 of the secret.
constexpr size_t kIdChars = 26, kSecretChars = 43;

std::string NewHostToken(const std::string& host_id, std::string* hash) {
  const std::string secret = Base64UrlEncode(RandomBytes(32));
  *hash = Sha256Hex(secret);
  return "spwh_" + host_id.substr(4) + "_" + secret;
}

}  // namespace

std::vector<Host> ListHosts(Tx& tx, const HostFilter& f) {
  std::vector<Host> out;
  for (const auto& r : tx.exec_prepared(kListHosts.name, f.after, f.region, f.gpu_model, f.state, f.limit))
    out.push_back(HostFrom(r));
  return out;
}

std::optional<Host> FindHost(Tx& tx, const std::string& id) {
  const auto rows = tx.exec_prepared(kGetHost.name, id);
  if (rows.empty()) return std::nullopt;
  return HostFrom(rows[0]);
}

std::vector<HostGpu> HostGpus(Tx& tx, const std::string& id) {
  std::vector<HostGpu> out;
  for (const auto& g : tx.exec_prepared(kHostGpus.name, id))
    out.push_back(HostGpu{g["gpu_index"].as<int>(), g["uuid"].as<std::string>(), g["model"].as<std::string>(),
                          g["memory_bytes"].as<std::int64_t>(), TextFrom(g["instance_id"])});
  return out;
}

bool SetHostState(Tx& tx, const std::string& id, const std::string& state) {
  return !tx.exec_prepared(kSetHostState.name, id, state).empty();
}

std::optional<HostToken> ParseHostToken(const std::string& credential) {
  if (credential.rfind("spwh_", 0) != 0) return std::nullopt;
  if (credential.size() != 5 + kIdChars + 1 + kSecretChars || credential[5 + kIdChars] != '_') return std::nullopt;
  HostToken t{"hst_" + credential.substr(5, kIdChars), credential.substr(credential.size() - kSecretChars)};
  if (!IsValidId(t.id, "hst")) return std::nullopt;
  return t;
}

std::optional<std::string> HostTokenHash(Tx& tx, const std::string& id) {
  const auto rows = tx.exec_prepared(kHostToken.name, id);
  if (rows.empty()) return std::nullopt;
  return rows[0]["token_hash"].as<std::string>();
}

Registered RegisterHost(Tx& tx, const Registration& reg, TimeMs now) {
  std::vector<std::string> uuids;
  for (const auto& g : reg.gpus) uuids.push_back(g.uuid);
  std::sort(uuids.begin(), uuids.end());
  std::string sorted = "{";
  for (size_t i = 0; i < uuids.size(); ++i) sorted += (i ? "," : "") + uuids[i];
  sorted += "}";

  std::string hash;
  std::optional<std::string> port_from, port_to;
  if (reg.port_range) {
    port_from = std::to_string(reg.port_range->from);
    port_to = std::to_string(reg.port_range->to);
  }
  const auto existing = tx.exec_prepared(kHostByName.name, reg.hostname);
  if (!existing.empty()) {
    const std::string id = existing[0]["id"].as<std::string>();
    if (existing[0]["uuids"].as<std::string>() != sorted)
      throw ApiError(409, "host_conflict", "host " + reg.hostname + " is registered with other GPUs");
    const std::string token = NewHostToken(id, &hash);
    // A driver upgrade, a new address: what the host says now is what it offers.
    tx.exec_prepared(kRotateHost.name, id, hash, reg.region, reg.zone, FormatTime(now), Nullable(reg.driver_version),
                     Nullable(reg.cuda_version), Nullable(reg.public_address), Nullable(port_from), Nullable(port_to),
                     reg.simulated);
    RecordAudit(tx, SystemAudit("", "host.reregister", id));
    return Registered{id, token, true};
  }
  const std::string id = NewId("hst");
  const std::string token = NewHostToken(id, &hash);
  tx.exec_prepared(kInsertHost.name, id, reg.hostname, reg.region, reg.zone, reg.gpus.at(0).model,
                   static_cast<std::int64_t>(reg.gpus.size()), hash, FormatTime(now), Nullable(reg.driver_version),
                   Nullable(reg.cuda_version), Nullable(reg.public_address), Nullable(port_from), Nullable(port_to),
                   reg.simulated);
  for (const auto& g : reg.gpus) {
    // Checked first: a unique violation would abort the transaction, so the clear message could
    // not be told from it.
    if (!tx.exec_prepared(kGpuTaken.name, g.uuid).empty())
      throw ApiError(409, "host_conflict", "GPU " + g.uuid + " is already registered to another host");
    try {
      tx.exec_prepared(kInsertGpu.name, id, g.index, g.uuid, g.model, g.memory_bytes);
    } catch (const pqxx::unique_violation&) {  // registered by a concurrent request meanwhile
      throw ApiError(409, "host_conflict", "GPU " + g.uuid + " is already registered to another host");
    }
  }
  RecordAudit(tx, SystemAudit("", "host.register", id));
  return Registered{id, token, false};
}

std::int64_t HostAssignmentVersion(Tx& tx, const std::string& host_id) {
  return tx.exec_prepared(kHostVersion.name, host_id)[0]["assignment_version"].as<std::int64_t>();
}

Assignments HostAssignments(Tx& tx, const std::string& host_id, const SecretBox& secrets) {
  Assignments a;
  a.version = HostAssignmentVersion(tx, host_id);
  for (const auto& r : tx.exec_prepared(kAssignments.name, host_id))
    a.instances.push_back(Assignment{r["id"].as<std::string>(),
                                     ParseInstanceState(r["state"].as<std::string>()).value_or(InstanceState::kRunning),
                                     ParseIntArray(r["gpu_indices"].as<std::string>()), TimeFrom(r["preempt_ms"])});
  for (auto& i : a.instances)
    if (i.state != InstanceState::kTerminating) i.spec = LoadWorkloadSpec(tx, i.instance_id, secrets);
  return a;
}

}  // namespace spillway
