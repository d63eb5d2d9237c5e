#include "apiserver/audit.hpp"

#include "core/db.hpp"

namespace spillway {
namespace {
const Statement kInsertAudit{"insert_audit", R"sql(
INSERT INTO audit_log (actor_key_id, tenant_id, action, target, request_id)
VALUES (NULLIF($1, ''), NULLIF($2, ''), $3, NULLIF($4, ''), NULLIF($5, '')))sql"};
}

void Audit(pqxx::transaction_base& tx, const Ctx& ctx, const std::string& tenant_id, const std::string& action,
           const std::string& target) {
  tx.exec_prepared(kInsertAudit.name, ctx.principal.key_id, tenant_id, action, target, ctx.request.request_id);
}

void AuditSystem(pqxx::transaction_base& tx, const std::string& tenant_id, const std::string& action,
                 const std::string& target) {
  tx.exec_prepared(kInsertAudit.name, std::string(), tenant_id, action, target, std::string());
}

}  // namespace spillway
