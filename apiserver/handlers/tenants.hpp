#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply CreateTenant(Ctx& ctx);  // POST /v1/tenants
Reply ListTenants(Ctx& ctx);   // GET /v1/tenants
Reply GetTenant(Ctx& ctx);     // GET /v1/tenants/{id}
Reply UpdateTenant(Ctx& ctx);  // PATCH /v1/tenants/{id}

// The operator's own tenant, created when missing (bootstrap-admin); returns its id.
std::string EnsureOperatorTenant(pqxx::transaction_base& tx, const std::string& name);

}  // namespace spillway::handlers
