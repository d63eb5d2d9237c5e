#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Operators: hosts.
Reply ListHosts(Ctx& ctx);       // GET /v1/hosts?region=&gpu_model=&state=
Reply GetHost(Ctx& ctx);         // GET /v1/hosts/{id}
Reply UpdateHost(Ctx& ctx);      // PATCH /v1/hosts/{id} {"state": active|draining|disabled}

}  // namespace spillway::handlers
