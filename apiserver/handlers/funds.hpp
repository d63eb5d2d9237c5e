#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Prepaid balances and spend limits (docs/architecture.md, "Prepaid balances and spend limits").
Reply GetBalance(Ctx& ctx);        // GET /v1/billing/balance[?tenant_id=]: a member its own; finance any
Reply AddCredit(Ctx& ctx);         // POST /v1/billing/tenants/{id}/credits {amount, reason} (finance, admin)
Reply ListCredits(Ctx& ctx);       // GET /v1/billing/tenants/{id}/credits (finance, admin)
Reply SetPaymentMode(Ctx& ctx);    // PUT /v1/billing/tenants/{id}/mode {mode} (finance, admin)
Reply SetSpendLimit(Ctx& ctx);     // PUT /v1/tenants/{id}/spend-limit {monthly_limit} (its member, finance, admin)

}  // namespace spillway::handlers
