#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply CreateInstance(Ctx& ctx);     // POST /v1/instances (Idempotency-Key)
Reply ListInstances(Ctx& ctx);      // GET /v1/instances?state=&market=
Reply GetInstance(Ctx& ctx);        // GET /v1/instances/{id}
extern const AsyncRead kGetInstanceAsync;  // the same, non-blocking (router.hpp, async_read)
Reply TerminateInstance(Ctx& ctx);  // DELETE /v1/instances/{id}

}  // namespace spillway::handlers
