#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Webhook endpoints (docs/architecture.md, "Webhooks"). A member registers its own tenant's; finance
// and admins one tenant's (tenant_id) or every tenant's (none named).
Reply CreateWebhook(Ctx& ctx);  // POST /v1/webhooks: the secret is in this answer only
Reply ListWebhooks(Ctx& ctx);   // GET /v1/webhooks
Reply DeleteWebhook(Ctx& ctx);  // DELETE /v1/webhooks/{id}

}  // namespace spillway::handlers
