#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Operators: hosts and capacity pools.
Reply ListHosts(Ctx& ctx);       // GET /v1/hosts?region=&gpu_model=&state=
Reply GetHost(Ctx& ctx);         // GET /v1/hosts/{id}
Reply UpdateHost(Ctx& ctx);      // PATCH /v1/hosts/{id} {"state": active|draining|disabled}
Reply GetCapacity(Ctx& ctx);     // GET /v1/capacity
Reply SetPoolCapacity(Ctx& ctx); // PUT /v1/capacity/pools/{region}/{gpu_model}

// Any key: the catalog and the spot market.
Reply ListInstanceTypes(Ctx& ctx);  // GET /v1/instance-types
Reply ListSpotPrices(Ctx& ctx);     // GET /v1/spot-prices?region=&gpu_model=&since=

// Agents (PROTOCOL.md).
Reply RegisterAgent(Ctx& ctx);      // POST /v1/agent/register (bootstrap token)
Reply AgentHeartbeat(Ctx& ctx);     // POST /v1/agent/heartbeat (host token)
Reply AgentAssignments(Ctx& ctx);   // GET /v1/agent/assignments?version=&wait= (host token, long poll)

}  // namespace spillway::handlers
