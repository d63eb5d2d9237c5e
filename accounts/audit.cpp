#include "accounts/audit.hpp"

#include "core/db.hpp"
#include "core/sql.hpp"

namespace spillway {
namespace {

const Statement kInsertAudit{"insert_audit", R"sql(
INSERT INTO audit_log (actor_key_id, tenant_id, action, target, request_id)
VALUES (NULLIF($1, ''), NULLIF($2, ''), $3, NULLIF($4, ''), NULLIF($5, '')))sql"};
const Statement kListAudit{"list_audit", R"sql(
SELECT id, )sql" SPW_EPOCH_MS("at") R"sql( AS at_ms, COALESCE(actor_key_id, '') AS actor_key_id,
       COALESCE(tenant_id, '') AS tenant_id, action, COALESCE(target, '') AS target,
       COALESCE(request_id, '') AS request_id
FROM audit_log
WHERE id > $1 AND ($2 = '' OR actor_key_id = $2) AND ($3 = '' OR action = $3) AND ($4 = '' OR tenant_id = $4)
  AND ($5::timestamptz IS NULL OR at >= $5::timestamptz)
ORDER BY id LIMIT $6)sql"};

}  // namespace

void RecordAudit(Tx& tx, const AuditRecord& r) {
  tx.exec_prepared(kInsertAudit.name, r.actor_key_id, r.tenant_id, r.action, r.target, r.request_id);
}

std::vector<AuditEntry> ListAudit(Tx& tx, const AuditFilter& f) {
  const auto since = TextOf(f.since);
  std::vector<AuditEntry> out;
  for (const auto& r : tx.exec_prepared(kListAudit.name, f.after_id, f.actor_key_id, f.action, f.tenant_id,
                                        Nullable(since), f.limit)) {
    AuditEntry e;
    e.id = r["id"].as<std::int64_t>();
    e.at = TimeFrom(r["at_ms"]).value_or(TimeMs{});
    e.record.actor_key_id = r["actor_key_id"].as<std::string>();
    e.record.tenant_id = r["tenant_id"].as<std::string>();
    e.record.action = r["action"].as<std::string>();
    e.record.target = r["target"].as<std::string>();
    e.record.request_id = r["request_id"].as<std::string>();
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace spillway
