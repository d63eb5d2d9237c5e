#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// A tenant's volumes (members their own tenant's; admins any, naming tenant_id).
Reply CreateVolume(Ctx& ctx);  // POST /v1/volumes {name, region, size_gb}
Reply ListVolumes(Ctx& ctx);   // GET /v1/volumes
Reply GetVolume(Ctx& ctx);     // GET /v1/volumes/{id}
Reply DeleteVolume(Ctx& ctx);  // DELETE /v1/volumes/{id} (only when detached)

}  // namespace spillway::handlers
