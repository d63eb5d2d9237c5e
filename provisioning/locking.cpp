// The lock order (docs/architecture.md): a host, then its instances; and the host's assignment
// version its agent waits on.
#include "provisioning/fleet.hpp"

#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/sql.hpp"
#include "provisioning/instances.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

void BumpHost(pqxx::transaction_base& tx, const std::string& host_id) { tx.exec_prepared(kBumpHost.name, host_id); }

bool LockHost(pqxx::transaction_base& tx, const std::string& host_id) {
  return !tx.exec_prepared(kLockHost.name, host_id).empty();
}

std::optional<LockedInstance> LockInstance(pqxx::transaction_base& tx, const std::string& id) {
  for (;;) {
    const auto h = tx.exec_prepared(kInstanceHostOf.name, id);
    if (h.empty()) return std::nullopt;
    const auto host = TextFrom(h[0]["host_id"]);
    if (host) LockHost(tx, *host);
    const auto row = tx.exec_prepared(kLockInstanceRow.name, id);
    if (row.empty()) return std::nullopt;
    if (TextFrom(row[0]["host_id"]) != host) continue;  // moved meanwhile: lock its new host
    return LockedInstance{row[0]["tenant_id"].as<std::string>(), host, StateOf(row[0]["state"])};
  }
}

}  // namespace spillway
