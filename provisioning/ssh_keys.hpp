#pragma once
// A tenant's SSH public keys (the store): what instances will let in (ssh_key_ids at launch).
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"
#include "core/ssh_keys.hpp"

namespace spillway {

struct SshKey {
  std::string id, tenant_id, name, key_type, public_key, fingerprint;
  int bits = 0;
  TimeMs created_at{};
};

// Adds `key` under `name`; throws ApiError 409 (ssh_key_exists) when the tenant already has this
// key or a key of that name.
SshKey AddSshKey(Tx& tx, const std::string& tenant_id, const std::string& name, const SshPublicKey& key, TimeMs now);
std::optional<SshKey> FindSshKey(Tx& tx, const std::string& tenant_id, const std::string& id);
std::vector<SshKey> ListSshKeys(Tx& tx, const std::string& tenant_id, const std::string& after, int limit);
// The key deleted, or nullopt when the tenant has none of that id.
std::optional<SshKey> DeleteSshKey(Tx& tx, const std::string& tenant_id, const std::string& id);

}  // namespace spillway
