#pragma once
#include <pqxx/pqxx>
#include <string>

#include "apiserver/context.hpp"

namespace spillway {

// Records a mutating request in audit_log, inside the caller's transaction so the row commits
// exactly when the change does.
void Audit(pqxx::transaction_base& tx, const Ctx& ctx, const std::string& tenant_id, const std::string& action,
           const std::string& target);
// For changes made outside a request (bootstrap-admin): no actor key, no request id.
void AuditSystem(pqxx::transaction_base& tx, const std::string& tenant_id, const std::string& action,
                 const std::string& target);

}  // namespace spillway
