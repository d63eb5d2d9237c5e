#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply ListAudit(Ctx& ctx);  // GET /v1/audit?actor=&action=&tenant_id=&since=&cursor=&limit= (admin)

}  // namespace spillway::handlers
