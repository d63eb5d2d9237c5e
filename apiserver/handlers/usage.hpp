#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// GET /v1/usage?from=&to=&granularity=hour|day[&instance_id=][&tenant_id=]: a tenant's metered
// GPU-hours per instance and period, each instance's coverage, and usage_complete_through.
Reply GetUsage(Ctx& ctx);
// GET /v1/fleet/usage?from=&to=&granularity=&region=&gpu_model= (operators): per pool, GPU-hours
// held by instances and idle.
Reply GetFleetUsage(Ctx& ctx);

}  // namespace spillway::handlers
