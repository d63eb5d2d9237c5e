#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply CreateApiKey(Ctx& ctx);  // POST /v1/tenants/{id}/api-keys
Reply ListApiKeys(Ctx& ctx);   // GET /v1/tenants/{id}/api-keys
Reply RevokeApiKey(Ctx& ctx);  // DELETE /v1/tenants/{id}/api-keys/{key_id}

struct IssuedKey {
  std::string id, token;
};
// Creates a key of `role` for `tenant_id` inside tx (bootstrap-admin and the handler share it).
IssuedKey IssueApiKey(pqxx::transaction_base& tx, const std::string& tenant_id, const std::string& role,
                      const std::string& name);

}  // namespace spillway::handlers
