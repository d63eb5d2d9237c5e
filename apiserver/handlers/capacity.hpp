#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Operators, admins and finance: capacity pools.
Reply GetCapacity(Ctx& ctx);     // GET /v1/capacity
Reply SetPoolCapacity(Ctx& ctx); // PUT /v1/capacity/pools/{region}/{gpu_model}

}  // namespace spillway::handlers
