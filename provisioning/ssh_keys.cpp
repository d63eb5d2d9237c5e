#include "provisioning/ssh_keys.hpp"

#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

#define SPW_SSH_COLUMNS \
  "id, tenant_id, name, key_type, bits, public_key, fingerprint, " SPW_EPOCH_MS("created_at") " AS created_ms"

const Statement kSshKeyConflict{"ssh_key_conflict",
                                "SELECT name, fingerprint FROM ssh_keys WHERE tenant_id = $1 AND (fingerprint = $2 OR name = $3)"};
const Statement kInsertSshKey{"insert_ssh_key", R"sql(
INSERT INTO ssh_keys (id, tenant_id, name, key_type, bits, public_key, fingerprint, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8::bigint / 1000.0))
ON CONFLICT DO NOTHING
RETURNING )sql" SPW_SSH_COLUMNS};
const Statement kGetSshKey{"get_ssh_key", "SELECT " SPW_SSH_COLUMNS " FROM ssh_keys WHERE tenant_id = $1 AND id = $2"};
const Statement kListSshKeys{"list_ssh_keys",
                             "SELECT " SPW_SSH_COLUMNS " FROM ssh_keys WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"};
const Statement kDeleteSshKey{"delete_ssh_key",
                              "DELETE FROM ssh_keys WHERE tenant_id = $1 AND id = $2 RETURNING " SPW_SSH_COLUMNS};

SshKey SshKeyFrom(const pqxx::row& r) {
  return {r["id"].as<std::string>(),         r["tenant_id"].as<std::string>(), r["name"].as<std::string>(),
          r["key_type"].as<std::string>(),   r["public_key"].as<std::string>(), r["fingerprint"].as<std::string>(),
          r["bits"].as<int>(),               *TimeFrom(r["created_ms"])};
}

}  // namespace

SshKey AddSshKey(Tx& tx, const std::string& tenant_id, const std::string& name, const SshPublicKey& key, TimeMs now) {
  for (const auto& r : tx.exec_prepared(kSshKeyConflict.name, tenant_id, key.fingerprint, name)) {
    if (r["fingerprint"].as<std::string>() == key.fingerprint)
      throw ApiError(409, "ssh_key_exists", "this key (" + key.fingerprint + ") is already added as \"" +
                                                r["name"].as<std::string>() + "\"");
    throw ApiError(409, "ssh_key_exists", "a key named \"" + name + "\" exists already");
  }
  // A concurrent add of the same key or name meets the unique constraints and inserts nothing.
  const auto rows = tx.exec_prepared(kInsertSshKey.name, NewId("ssh"), tenant_id, name, key.type, key.bits, key.Line(),
                                     key.fingerprint, EpochMs(now));
  if (rows.empty()) throw ApiError(409, "ssh_key_exists", "this key, or a key of this name, was just added");
  return SshKeyFrom(rows[0]);
}

std::optional<SshKey> FindSshKey(Tx& tx, const std::string& tenant_id, const std::string& id) {
  const auto rows = tx.exec_prepared(kGetSshKey.name, tenant_id, id);
  if (rows.empty()) return std::nullopt;
  return SshKeyFrom(rows[0]);
}

std::vector<SshKey> ListSshKeys(Tx& tx, const std::string& tenant_id, const std::string& after, int limit) {
  std::vector<SshKey> out;
  for (const auto& r : tx.exec_prepared(kListSshKeys.name, tenant_id, after, limit)) out.push_back(SshKeyFrom(r));
  return out;
}

std::optional<SshKey> DeleteSshKey(Tx& tx, const std::string& tenant_id, const std::string& id) {
  const auto rows = tx.exec_prepared(kDeleteSshKey.name, tenant_id, id);
  if (rows.empty()) return std::nullopt;
  return SshKeyFrom(rows[0]);
}

}  // namespace spillway
