#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply CreateInstance(Ctx& ctx);     // POST /v1/instances (Idempotency-Key)
Reply ListInstances(Ctx& ctx);      // GET /v1/instances?state=&market=&tenant_id=&host_id=
extern const AsyncRead kListInstancesAsync;  // the same, non-blocking (router.hpp, async_read)
Reply GetInstance(Ctx& ctx);        // GET /v1/instances/{id}
extern const AsyncRead kGetInstanceAsync;  // the same, non-blocking (router.hpp, async_read)
Reply TerminateInstance(Ctx& ctx);  // DELETE /v1/instances/{id}

}  // namespace spillway::handlers
