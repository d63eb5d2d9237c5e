#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply CreateInstance(Ctx& ctx);     // POST /v1/instances (Idempotency-Key)
Reply ListInstances(Ctx& ctx);      // GET /v1/instances?state=&market=
Reply GetInstance(Ctx& ctx);        // GET /v1/instances/{id}
Reply TerminateInstance(Ctx& ctx);  // DELETE /v1/instances/{id}

}  // namespace spillway::handlers
