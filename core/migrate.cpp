#include "core/migrate.hpp"

#include <map>
#include <set>

#include "core/crypto.hpp"
#include "core/log.hpp"

namespace spillway {
namespace {

// "SPILWAY\0" as an integer: the advisory lock every migrate run takes.
constexpr long long kMigrateLock = 0x5350494C57415900LL;

constexpr const char* kCreateLedger = R"sql(
CREATE TABLE IF NOT EXISTS schema_migrations (
  name       text PRIMARY KEY,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
))sql";

std::map<std::string, std::string> Recorded(pqxx::connection& conn) {
  pqxx::nontransaction tx(conn);
  const auto exists = tx.exec1("SELECT to_regclass('schema_migrations') IS NOT NULL AS present")["present"].as<bool>();
  std::map<std::string, std::string> out;
  if (!exists) return out;
  for (const auto& row : tx.exec("SELECT name, checksum FROM schema_migrations"))
    out[row["name"].as<std::string>()] = row["checksum"].as<std::string>();
  return out;
}

}  // namespace

std::string MigrationChecksum(const Migration& m) { return Sha256Hex(m.sql); }

MigrateResult ApplyMigrations(pqxx::connection& conn, const std::vector<Migration>& migrations) {
  {
    pqxx::nontransaction tx(conn);
    tx.exec_params("SELECT pg_advisory_lock($1)", kMigrateLock);
  }
  struct Unlock {
    pqxx::connection& c;
    ~Unlock() {
      try {
        if (c.is_open()) pqxx::nontransaction(c).exec_params("SELECT pg_advisory_unlock($1)", kMigrateLock);
      } catch (...) {
      }
    }
  } unlock{conn};

  {
    pqxx::work tx(conn);
    tx.exec(kCreateLedger);
    tx.commit();
  }
  const auto recorded = Recorded(conn);
  MigrateResult result;
  std::set<std::string> known;
  for (const auto& m : migrations) {
    known.insert(m.name);
    const std::string sum = MigrationChecksum(m);
    if (auto it = recorded.find(m.name); it != recorded.end()) {
      if (it->second != sum)
        throw MigrationError("migration " + m.name + " changed after it was applied (recorded checksum " +
                             it->second.substr(0, 12) + "…, now " + sum.substr(0, 12) +
                             "…); a landed migration is never edited: add a new one instead");
      ++result.already_applied;
      continue;
    }
    pqxx::work tx(conn);
    try {
      tx.exec(m.sql);
    } catch (const pqxx::sql_error& e) {
      throw MigrationError("migration " + m.name + " failed: " + e.what());
    }
    tx.exec_params("INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", m.name, sum);
    tx.commit();
    log::Info("migration applied", {{"migration", m.name}});
    ++result.applied;
  }
  for (const auto& [name, sum] : recorded)
    if (!known.count(name)) log::Warn("database has a migration this binary does not know", {{"migration", name}});
  return result;
}

SchemaStatus CheckSchema(pqxx::connection& conn, const std::vector<Migration>& migrations) {
  const auto recorded = Recorded(conn);
  SchemaStatus status;
  std::set<std::string> known;
  for (const auto& m : migrations) {
    known.insert(m.name);
    if (!recorded.count(m.name)) status.pending.push_back(m.name);
  }
  for (const auto& [name, sum] : recorded)
    if (!known.count(name)) status.unknown.push_back(name);
  return status;
}

}  // namespace spillway
