#pragma once
// Tenants' env values at rest (instances.env): each sealed by core/secrets, bound to its instance and
// name, so the column holds no plaintext and a value copied to another row or name does not open.
// The agent of the instance's host gets them in plaintext over its host token (LoadWorkloadSpec).
#include <pqxx/pqxx>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/secrets.hpp"

namespace spillway {

using EnvValues = std::vector<std::pair<std::string, std::string>>;  // name, value

// instances.env as JSON text: {"NAME": "spw1:<key>:…"}.
std::string SealEnv(const SecretBox& box, const std::string& instance_id, const EnvValues& env);
// The values of instances.env, sorted by name; throws SecretError when one does not open.
EnvValues OpenEnv(const SecretBox& box, const std::string& instance_id, const std::string& env_json);

// At start-up, before serving: every key that sealed values (secret_keys) must be in the box and be
// the same key (a check value sealed under each opens), else SecretError naming the key; each key
// of the box is recorded. Then env values stored before sealing are sealed. Returns how many.
std::int64_t PrepareSecrets(pqxx::connection& conn, const SecretBox& box);

struct ResealReport {
  std::int64_t values = 0, instances = 0;  // re-sealed under the newest key
  std::vector<std::string> retired;        // keys no value is sealed under any more (removed from secret_keys)
};
// `spillway-apiserver rotate-secrets`: every env value not sealed under the box's newest key is
// opened and sealed again under it, a page of instances per transaction.
ResealReport ResealEnv(pqxx::connection& conn, const SecretBox& box);

}  // namespace spillway
