#include "provisioning/sealed_env.hpp"

#include <boost/json.hpp>

#include <algorithm>

#include "core/db.hpp"
#include "core/db_fwd.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

const Statement kSecretKeys{"secret_keys", "SELECT key_id, check_value FROM secret_keys ORDER BY key_id"};
const Statement kRecordKey{"record_secret_key",
                           "INSERT INTO secret_keys (key_id, check_value) VALUES ($1, $2) ON CONFLICT (key_id) DO NOTHING"};
// A page of instances with env values not sealed under key $1 (plain text stored before sealing
// among them), after id $2.
const Statement kEnvToSeal{"env_to_seal", R"sql(
SELECT id, env::text AS env FROM instances
WHERE id > $2 AND EXISTS (SELECT 1 FROM jsonb_each_text(env) e
                          WHERE left(e.value, 5) <> 'spw1:' OR split_part(e.value, ':', 2) <> $1)
ORDER BY id LIMIT $3 FOR UPDATE)sql"};
// Written only if nobody changed it meanwhile.
const Statement kSetEnv{"set_sealed_env", "UPDATE instances SET env = $3::jsonb WHERE id = $1 AND env = $2::jsonb"};
const Statement kKeysInUse{"secret_keys_in_use", R"sql(
SELECT DISTINCT split_part(e.value, ':', 2) AS key_id
FROM instances i, jsonb_each_text(i.env) e WHERE left(e.value, 5) = 'spw1:')sql"};
// Whether every row is known sealed: the CHECK is validated once the rows from before it are.
const Statement kAllSealed{"env_all_sealed",
                           "SELECT convalidated AS done FROM pg_constraint WHERE conname = 'instances_env_sealed' "
                           "AND conrelid = 'instances'::regclass"};
const Statement kForgetKey{"forget_secret_key", "DELETE FROM secret_keys WHERE key_id = $1"};

constexpr std::string_view kCheckPlaintext = "spillway secret key check";
std::string CheckContext(const std::string& key_id) { return "secret_keys:" + key_id; }
std::string EnvContext(const std::string& instance_id, std::string_view name) {
  return "instances.env:" + instance_id + ":" + std::string(name);
}

// Seals every value of `env_json` not sealed under the newest key (opening those under another).
// Returns the new JSON and how many values changed.
std::pair<std::string, std::int64_t> Reseal(const SecretBox& box, const std::string& id, const std::string& env_json,
                                            bool plaintext_only) {
  auto env = boost::json::parse(env_json).as_object();
  std::int64_t changed = 0;
  for (auto& [name, v] : env) {
    const std::string value(v.as_string());
    const auto key = SecretBox::KeyIdOf(value);
    if (key && (plaintext_only || *key == box.newest_key_id())) continue;
    const std::string plain = key ? box.Open(value, EnvContext(id, name)) : value;
    v = box.Seal(plain, EnvContext(id, name));
    ++changed;
  }
  return {boost::json::serialize(env), changed};
}

// Pages through the instances whose env has values not under the newest key, resealing them.
ResealReport ResealPages(pqxx::connection& conn, const SecretBox& box, bool plaintext_only) {
  ResealReport report;
  std::string after;
  for (;;) {
    const auto page = InTransaction(conn, [&](Tx& tx) {
      ResealReport part;
      std::string last;
      const auto rows = tx.exec_prepared(kEnvToSeal.name, box.newest_key_id(), after, 200);
      for (const auto& r : rows) {
        last = r["id"].as<std::string>();
        const std::string env = r["env"].as<std::string>();
        const auto [sealed, changed] = Reseal(box, last, env, plaintext_only);
        if (changed == 0) continue;
        tx.exec_prepared(kSetEnv.name, last, env, sealed);
        part.values += changed;
        ++part.instances;
      }
      return std::pair{part, rows.empty() ? std::string() : last};
    });
    report.values += page.first.values;
    report.instances += page.first.instances;
    if (page.second.empty()) return report;
    after = page.second;
  }
}

}  // namespace

std::string SealEnv(const SecretBox& box, const std::string& instance_id, const EnvValues& env) {
  boost::json::object out;
  for (const auto& [name, value] : env) out[name] = box.Seal(value, EnvContext(instance_id, name));
  return boost::json::serialize(out);
}

EnvValues OpenEnv(const SecretBox& box, const std::string& instance_id, const std::string& env_json) {
  EnvValues out;
  const boost::json::value env = boost::json::parse(env_json);  // kept: the loop reads into it
  for (const auto& [name, value] : env.as_object())
    out.emplace_back(std::string(name), box.Open(value.as_string(), EnvContext(instance_id, name)));
  std::sort(out.begin(), out.end());
  return out;
}

std::int64_t PrepareSecrets(pqxx::connection& conn, const SecretBox& box) {
  InTransaction(conn, [&](Tx& tx) {
    for (const auto& r : tx.exec_prepared(kSecretKeys.name)) {
      const std::string id = r["key_id"].as<std::string>();
      if (!box.Has(id))
        throw SecretError("env values are sealed under key " + id + ", which " + box.source() +
                          " does not hold: add that key back (keys rotate with `spillway-apiserver rotate-secrets`)");
      try {
        if (box.Open(r["check_value"].as<std::string>(), CheckContext(id)) != kCheckPlaintext) throw SecretError("");
      } catch (const SecretError&) {
        throw SecretError("key " + id + " in " + box.source() +
                          " is not the key that sealed this database's env values under that id");
      }
    }
  });
  // Only the newest key seals, so a key that sealed anything was recorded when it was the newest.
  InTransaction(conn, [&](Tx& tx) {
    tx.exec_prepared(kRecordKey.name, box.newest_key_id(),
                     box.Seal(std::string(kCheckPlaintext), CheckContext(box.newest_key_id())));
  });
  // Rows from before sealing: sealed once, then the CHECK is validated over the whole table, so later
  // start-ups read one catalog row instead of every instance.
  const bool all_sealed = InTransaction(conn, [&](Tx& tx) { return tx.exec_prepared1(kAllSealed.name)["done"].as<bool>(); });
  if (all_sealed) return 0;
  const std::int64_t sealed = ResealPages(conn, box, /*plaintext_only=*/true).values;
  InTransaction(conn, [&](Tx& tx) { tx.exec("ALTER TABLE instances VALIDATE CONSTRAINT instances_env_sealed"); });
  return sealed;
}

ResealReport ResealEnv(pqxx::connection& conn, const SecretBox& box) {
  PrepareSecrets(conn, box);
  ResealReport report = ResealPages(conn, box, /*plaintext_only=*/false);
  InTransaction(conn, [&](Tx& tx) {
    std::vector<std::string> used;
    for (const auto& r : tx.exec_prepared(kKeysInUse.name)) used.push_back(r["key_id"].as<std::string>());
    for (const auto& r : tx.exec_prepared(kSecretKeys.name)) {
      const std::string id = r["key_id"].as<std::string>();
      if (id == box.newest_key_id() || std::find(used.begin(), used.end(), id) != used.end()) continue;
      tx.exec_prepared(kForgetKey.name, id);
      report.retired.push_back(id);
    }
  });
  return report;
}

}  // namespace spillway
