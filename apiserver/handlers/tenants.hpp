#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply CreateTenant(Ctx& ctx);  // POST /v1/tenants
Reply ListTenants(Ctx& ctx);   // GET /v1/tenants
Reply GetTenant(Ctx& ctx);     // GET /v1/tenants/{id}
extern const AsyncRead kGetTenantAsync;  // the same, non-blocking (router.hpp, async_read)
Reply UpdateTenant(Ctx& ctx);  // PATCH /v1/tenants/{id}

}  // namespace spillway::handlers
