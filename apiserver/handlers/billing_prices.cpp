// The price book (docs/architecture.md, "Billing"): read it, schedule a change.
#include "apiserver/handlers/billing_prices.hpp"

#include <boost/json.hpp>

#include <algorithm>

#include "accounts/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "billing/exact_amount.hpp"
#include "billing/prices.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"
#include "core/money.hpp"

namespace spillway::handlers {
namespace {

// past: superseded; current: in effect now; scheduled: takes effect later.
boost::json::object EntryJson(const PriceBookEntry& e, const char* status) {
  boost::json::object o;
  o["kind"] = e.storage() ? "storage" : "gpu";
  if (e.storage()) {
    o["price_per_gb_month"] = FormatMicros(e.price_micros);
  } else {
    o["gpu_model"] = e.gpu_model;
    o["price_per_gpu_hour"] = FormatMicros(e.price_micros);
  }
  o["effective_from"] = FormatTime(e.effective_from);
  o["status"] = status;
  return o;
}

}  // namespace

Reply ListPrices(Ctx& ctx) {
  const TimeMs now = ctx.clock.Now();
  const auto book = ctx.Read([&](Tx& tx) { return PriceBook(tx); });
  boost::json::array data;
  for (std::size_t i = 0; i < book.size(); ++i) {
    const auto& e = book[i];
    const bool later_in_effect = i + 1 < book.size() && book[i + 1].gpu_model == e.gpu_model &&
                                 book[i + 1].effective_from <= now;
    const char* status = e.effective_from > now ? "scheduled" : later_in_effect ? "past" : "current";
    data.push_back(EntryJson(e, status));
  }
  return {200, boost::json::object{{"data", std::move(data)}}};
}

Reply SchedulePrice(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  const std::string kind = ReqString(body, "kind", 16);
  PriceBookEntry entry;
  std::string price_field;
  if (kind == "gpu") {
    OnlyKeys(body, {"kind", "gpu_model", "price_per_gpu_hour", "effective_from"});
    entry.gpu_model = ReqString(body, "gpu_model", 64);
    const auto& types = ctx.config.instance_types();
    if (std::none_of(types.begin(), types.end(), [&](const auto& t) { return t.gpu_model == entry.gpu_model; }))
      throw InvalidInput("gpu_model: " + entry.gpu_model + " is not a GPU model of the catalog");
    price_field = "price_per_gpu_hour";
  } else if (kind == "storage") {
    OnlyKeys(body, {"kind", "price_per_gb_month", "effective_from"});
    price_field = "price_per_gb_month";
  } else {
    throw InvalidInput("kind: must be gpu or storage");
  }
  const auto micros = ParseMicros(ReqString(body, price_field, 32));
  const std::int64_t max = kind == "gpu" ? billing::kMaxPriceMicros : billing::kMaxStoragePriceMicros;
  if (!micros || *micros <= 0 || *micros > max)
    throw InvalidInput(price_field + ": a positive USD amount with at most six decimals, such as \"2.490000\", of at most " +
                       FormatMicros(max));
  entry.price_micros = *micros;
  const auto from = ParseTime(ReqString(body, "effective_from", 40));
  if (!from) throw InvalidInput("effective_from: an RFC 3339 time in UTC");
  if (*from <= ctx.clock.Now())
    throw InvalidInput("effective_from: must be in the future (a price in effect is never rewritten)");
  entry.effective_from = *from;
  return ctx.Write([&](Tx& tx) {
    if (!spillway::SchedulePrice(tx, entry))
      throw ApiError(409, "price_exists",
                     std::string(entry.storage() ? "the storage price" : entry.gpu_model + "'s price") +
                         " already changes at " + FormatTime(entry.effective_from));
    // The target says what was set: "H100-80GB=2.100000@2027-01-01T00:00:00.000Z".
    RecordAudit(tx, ctx.AuditOf("", entry.storage() ? "price.schedule_storage" : "price.schedule_gpu",
                                (entry.storage() ? std::string("storage") : entry.gpu_model) + "=" +
                                    FormatMicros(entry.price_micros) + "@" + FormatTime(entry.effective_from)));
    return Reply{201, EntryJson(entry, "scheduled")};
  });
}

}  // namespace spillway::handlers
