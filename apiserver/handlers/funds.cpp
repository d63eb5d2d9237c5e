#include "apiserver/handlers/funds.hpp"

#include <boost/json.hpp>

#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/handlers/common.hpp"
#include "billing/exact_amount.hpp"
#include "billing/funds.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/money.hpp"

namespace spillway::handlers {
namespace {

boost::json::object FundsJson(const billing::Funds& f, const billing::FundsSettings& s, TimeMs now) {
  const auto runway = f.runway_seconds();
  return {{"tenant_id", f.tenant_id},
          {"mode", f.mode},
          {"currency", "USD"},
          {"credits", billing::FormatMicrosWide(f.credits_micros)},
          {"consumed", billing::FormatMicrosWide(f.consumed_micros)},
          {"pending", billing::FormatMicrosWide(f.pending_micros)},
          {"balance", billing::FormatMicrosWide(f.balance_micros())},
          {"prepaid_since", JsonTime(f.prepaid_since)},
          {"burn_per_hour", FormatMicros(f.burn_micros_per_hour)},
          {"runway_seconds", runway ? boost::json::value(*runway) : nullptr},
          {"low_balance_runway_seconds", std::chrono::duration_cast<std::chrono::seconds>(s.low_balance_runway).count()},
          {"min_launch_runway_seconds", std::chrono::duration_cast<std::chrono::seconds>(s.min_launch_runway).count()},
          {"monthly_limit", f.monthly_limit_cents ? boost::json::value(billing::FormatAmount(*f.monthly_limit_cents)) : nullptr},
          {"spent_this_month", billing::FormatMicrosWide(f.spent_this_month_micros)},
          {"as_of", FormatTime(now)}};
}

boost::json::object CreditJson(const billing::Credit& c) {
  return {{"id", c.id},
          {"tenant_id", c.tenant_id},
          {"amount", billing::FormatAmount(c.amount_cents)},
          {"reason", c.reason},
          {"created_at", FormatTime(c.created_at)}};
}

billing::FundsSettings Settings(const Ctx& ctx) { return billing::FundsSettings::From(ctx.config); }

}  // namespace

Reply GetBalance(Ctx& ctx) {
  const std::string tenant = ctx.OwnerTenantFromQuery();
  const TimeMs now = ctx.clock.Now();
  const auto f = ctx.ReadSnapshot([&](Tx& tx) {
    RequireTenant(tx, tenant);
    return billing::FundsOf(tx, tenant, now, Settings(ctx));
  });
  return {200, FundsJson(f, Settings(ctx), now)};
}

Reply AddCredit(Ctx& ctx) {
  const std::string tenant = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"amount", "reason"});
  const auto amount = billing::ParseAmount(ReqString(body, "amount", 32));
  if (!amount || *amount <= 0 || *amount > billing::kMaxAmountCents)
    throw InvalidInput("amount: a positive USD amount with at most two decimals, such as \"500.00\", of at most " +
                       billing::FormatAmount(billing::kMaxAmountCents));
  const std::string reason = ReqString(body, "reason", 500);
  return ctx.Write([&](Tx& tx) {
    RequireTenant(tx, tenant);
    const auto c = billing::AddCredit(tx, tenant, *amount, reason, "key:" + ctx.principal.key_id, ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(tenant, "billing.credit", c.id + " " + billing::FormatAmount(c.amount_cents)));
    auto json = CreditJson(c);
    json["funds"] = FundsJson(billing::FundsOf(tx, tenant, ctx.clock.Now(), Settings(ctx)), Settings(ctx), ctx.clock.Now());
    return Reply{201, std::move(json)};
  });
}

Reply ListCredits(Ctx& ctx) {
  const std::string tenant = ctx.Param("id");
  const auto credits = ctx.ReadSnapshot([&](Tx& tx) {
    RequireTenant(tx, tenant);
    return billing::CreditsOf(tx, tenant);
  });
  boost::json::array data;
  for (const auto& c : credits) data.push_back(CreditJson(c));
  return {200, boost::json::object{{"data", std::move(data)}}};
}

Reply SetPaymentMode(Ctx& ctx) {
  const std::string tenant = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"mode"});
  const std::string mode = ReqString(body, "mode", 20);
  if (mode != "prepaid" && mode != "postpaid") throw InvalidInput("mode: prepaid or postpaid");
  return ctx.Write([&](Tx& tx) {
    RequireTenant(tx, tenant);
    billing::SetMode(tx, tenant, mode, ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(tenant, "billing.mode", mode));
    return Reply{200, FundsJson(billing::FundsOf(tx, tenant, ctx.clock.Now(), Settings(ctx)), Settings(ctx), ctx.clock.Now())};
  });
}

Reply SetSpendLimit(Ctx& ctx) {
  const std::string tenant = ctx.Param("id");
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"monthly_limit"});
  const auto* v = body.if_contains("monthly_limit");
  if (!v) throw InvalidInput("monthly_limit: a USD amount such as \"500.00\", or null for none");
  std::optional<std::int64_t> cents;
  if (!v->is_null()) {
    if (!v->is_string()) throw InvalidInput("monthly_limit: a USD amount as a string, such as \"500.00\", or null");
    cents = billing::ParseAmount(std::string(v->as_string()));
    if (!cents || *cents <= 0 || *cents > billing::kMaxAmountCents)
      throw InvalidInput("monthly_limit: a positive USD amount with at most two decimals, such as \"500.00\", of at most " +
                         billing::FormatAmount(billing::kMaxAmountCents) + ", or null");
  }
  return ctx.Write([&](Tx& tx) {
    RequireTenant(tx, tenant);
    billing::SetMonthlyLimit(tx, tenant, cents, ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(tenant, "billing.spend_limit", cents ? billing::FormatAmount(*cents) : "none"));
    return Reply{200, FundsJson(billing::FundsOf(tx, tenant, ctx.clock.Now(), Settings(ctx)), Settings(ctx), ctx.clock.Now())};
  });
}

}  // namespace spillway::handlers
