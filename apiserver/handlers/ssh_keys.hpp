#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// A tenant's SSH keys (members their own tenant's; admins any, naming tenant_id).
Reply CreateSshKey(Ctx& ctx);  // POST /v1/ssh-keys {name, public_key} or {name, generate: true}
Reply ListSshKeys(Ctx& ctx);   // GET /v1/ssh-keys
Reply GetSshKey(Ctx& ctx);     // GET /v1/ssh-keys/{id}
Reply DeleteSshKey(Ctx& ctx);  // DELETE /v1/ssh-keys/{id}

}  // namespace spillway::handlers
