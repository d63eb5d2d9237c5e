#pragma once
#include <pqxx/pqxx>

#include <stdexcept>
#include <string>
#include <vector>

namespace spillway {

struct Migration {
  std::string name;  // "0001_create_foundation.sql"
  std::string sql;
};

// The files of migrations/, in order, compiled into the binary (migrations/CMakeLists.txt).
const std::vector<Migration>& EmbeddedMigrations();

struct MigrationError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct MigrateResult {
  int applied = 0;
  int already_applied = 0;
};

// Applies the migrations not yet recorded, in order, each in its own transaction, all under one
// advisory lock so concurrent runs serialize. Refuses (MigrationError) when a recorded migration's
// text changed since it was applied.
MigrateResult ApplyMigrations(pqxx::connection& conn, const std::vector<Migration>& migrations);

struct SchemaStatus {
  std::vector<std::string> pending;  // known to this binary, not applied
  std::vector<std::string> unknown;  // applied, not known to this binary (a newer binary ran migrate)
  bool current() const { return pending.empty(); }
};
SchemaStatus CheckSchema(pqxx::connection& conn, const std::vector<Migration>& migrations);

std::string MigrationChecksum(const Migration& m);

}  // namespace spillway
