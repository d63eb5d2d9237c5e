#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// The price book (finance, admin; operators read it): GPU models' on-demand prices per GPU-hour and
// the storage price per GB-month, effective-dated.
Reply ListPrices(Ctx& ctx);     // GET /v1/billing/prices
Reply SchedulePrice(Ctx& ctx);  // POST /v1/billing/prices: a change from a future time

}  // namespace spillway::handlers
