#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply CreateApiKey(Ctx& ctx);  // POST /v1/tenants/{id}/api-keys
Reply ListApiKeys(Ctx& ctx);   // GET /v1/tenants/{id}/api-keys
Reply RevokeApiKey(Ctx& ctx);  // DELETE /v1/tenants/{id}/api-keys/{key_id}

}  // namespace spillway::handlers
