#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Any key: the catalog and the spot market.
Reply ListInstanceTypes(Ctx& ctx);  // GET /v1/instance-types
Reply ListSpotPrices(Ctx& ctx);     // GET /v1/spot-prices?region=&gpu_model=&since=&order=&cursor=
Reply ListLatestSpotPrices(Ctx& ctx);  // GET /v1/spot-prices/latest?region=&gpu_model=

}  // namespace spillway::handlers
