#pragma once
// The audit log: who changed what, written in the same transaction as the change.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway {

struct AuditRecord {
  std::string tenant_id;     // whose resource ("" for the fleet's own: hosts, pools)
  std::string actor_key_id;  // the acting key ("" for the system: bootstrap, the controllers)
  std::string action;        // e.g. "instance.terminate"
  std::string target;        // the resource's id
  std::string request_id;    // the request that made the change ("" for the system)
};
void RecordAudit(Tx& tx, const AuditRecord& record);
// A change the system made (bootstrap, registration, the controllers): no actor, no request.
inline AuditRecord SystemAudit(std::string tenant_id, std::string action, std::string target) {
  return AuditRecord{std::move(tenant_id), "", std::move(action), std::move(target), ""};
}

struct AuditEntry {
  std::int64_t id = 0;
  TimeMs at;
  AuditRecord record;
};
struct AuditFilter {
  std::string actor_key_id, action, tenant_id;  // "" = any
  std::optional<TimeMs> since;
  std::int64_t after_id = 0;  // the page cursor (ids ascend with time)
  int limit = 50;
};
// Oldest first, from after_id.
std::vector<AuditEntry> ListAudit(Tx& tx, const AuditFilter& filter);

}  // namespace spillway
