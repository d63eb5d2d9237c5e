#include "apiserver/billing_steps.hpp"

#include <boost/json.hpp>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include "accounts/audit.hpp"
#include "core/db.hpp"
#include "core/json.hpp"
#include "core/money.hpp"
#include "metering/usage.hpp"
#include "provisioning/instances.hpp"
#include "webhooks/webhooks.hpp"
#include "core/log.hpp"
#include "core/periodic.hpp"

namespace spillway {
using namespace billing;

using namespace prometheus;

Billing::Billing(BillingSettings settings, Registry& registry) : settings_(std::move(settings)) {
  invoices_ = &BuildGauge().Name("spillway_invoices").Help("Invoices by status (set by the leader)").Register(registry);
  billed_ = &BuildCounter()
                 .Name("spillway_billed_micros_total")
                 .Help("Money rated onto invoices, in micro-dollars (whole cents), by market, as drafts grow and "
                       "periods close")
                 .Register(registry);
  failures_ = &BuildCounter()
                   .Name("spillway_billing_failures_total")
                   .Help("Billing steps (drafts, close, gauges) or API closes that failed, by step")
                   .Register(registry);
  rating_lag_ = &BuildGauge()
                     .Name("spillway_billing_rating_lag_seconds")
                     .Help("Now minus the oldest usage change not yet drafted onto an invoice (set by the leader)")
                     .Register(registry)
                     .Add({});
  close_seconds_ = &BuildHistogram()
                        .Name("spillway_period_close_seconds")
                        .Help("Time one period close took (its transaction: every invoice of the month finalized)")
                        .Register(registry)
                        .Add({}, Histogram::BucketBoundaries{0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300});
  close_incomplete_ = &BuildCounter()
                           .Name("spillway_period_close_incomplete_total")
                           .Help("Periods closed with some hosts not yet reported past their end (billing.close_max_wait "
                                 "passed, or closed on demand)")
                           .Register(registry)
                           .Add({});
  stopped_ = &BuildCounter()
                  .Name("spillway_instances_stopped_for_funds_total")
                  .Help("Instances stopped because a prepaid balance ran out (insufficient_funds) or a monthly spend "
                        "limit was reached (spend_limit)")
                  .Register(registry);
  balances_ = &BuildGauge()
                   .Name("spillway_tenant_balance_micros")
                   .Help("Prepaid balances in micro-dollars, as aggregates only: their sum and the lowest (set by the "
                         "leader after each fold)")
                   .Register(registry);
  low_ = &BuildGauge()
              .Name("spillway_tenants_low_balance")
              .Help("Prepaid tenants whose runway is under billing.low_balance_runway (set by the leader)")
              .Register(registry)
              .Add({});
  unmetered_ = &BuildCounter()
                    .Name("spillway_unmetered_held_gpu_seconds_total")
                    .Help("GPU time instances held that no sample ever covered (an agent stopped, a host lost), "
                          "judged per instance-hour once its host reported past the hour; not billed, by pool")
                    .Register(registry);
  held_ = &BuildCounter()
               .Name("spillway_held_gpu_seconds_total")
               .Help("GPU time instances held, judged as spillway_unmetered_held_gpu_seconds_total is (its "
                     "denominator), by pool")
               .Register(registry);
  for (const char* reason : {"insufficient_funds", "spend_limit"}) stopped_->Add({{"reason", reason}});
  for (const char* stat : {"sum", "min"}) balances_->Add({{"stat", stat}});
  for (const char* status : {"draft", "finalized"}) invoices_->Add({{"status", status}});
  for (const char* market : {"on_demand", "spot", "storage"}) billed_->Add({{"market", market}});
  for (const char* step : {"billing_drafts", "billing_close", "billing_gauges", "spend_controls", "api_close",
                           "billing_unmetered"})
    failures_->Add({{"step", step}});
}

void Billing::Register(PeriodicSteps& steps, Millis draft_interval) {
  // Each body counts its own failure, then rethrows so the controller counts and logs it too.
  const auto counted = [this](const char* name, auto body) {
    return [this, name, body](pqxx::connection& c, const StepContext& s) {
      try {
        body(c, s.now);
      } catch (...) {
        Failed(name);
        throw;
      }
    };
  };
  steps.Add({"billing_drafts", draft_interval,
             counted("billing_drafts", [this](pqxx::connection& c, TimeMs now) { Drafts(c, now); })});
  steps.Add({"billing_close", std::chrono::minutes(1),
             counted("billing_close", [this](pqxx::connection& c, TimeMs now) { CloseDue(c, now); })});
  // Right after each fold (registered after it, at the same interval): a balance is as current as
  // the rated usage, so an empty one is stopped within a sample and a rating interval.
  steps.Add({"spend_controls", draft_interval,
             counted("spend_controls", [this](pqxx::connection& c, TimeMs now) { SpendControls(c, now); })});
  steps.Add({"billing_unmetered", std::chrono::seconds(15),
             counted("billing_unmetered", [this](pqxx::connection& c, TimeMs) { Unmetered(c); })});
  steps.Add({"billing_gauges", std::chrono::seconds(15),
             counted("billing_gauges", [this](pqxx::connection& c, TimeMs now) { Gauges(c, now); })});
}

void Billing::Drafts(Session& conn, TimeMs now) { Observe(DraftInvoices(conn, now, settings_)); }

int Billing::CloseDue(Session& conn, TimeMs now) {
  std::vector<Month> due;
  {
    pqxx::read_transaction tx(conn, "billing_close_plan");
    due = PeriodsToClose(tx, now);
  }
  int closed = 0;
  for (const Month& month : due) {
    const bool ready = InTransaction(conn, [&](Tx& tx) { return ReadinessOf(tx, month).ready(); });
    if (!ready && now < month.end + settings_.close_max_wait) break;  // in order: wait for this one
    const auto start = std::chrono::steady_clock::now();
    const PeriodClose c =
        InTransaction(conn, [&](Tx& tx) { return ClosePeriod(tx, month, now, settings_, "system"); });
    Observe(c, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    ++closed;
  }
  return closed;
}

int Billing::SpendControls(Session& conn, TimeMs now) {
  const auto verdicts = InTransaction(conn, [&](Tx& tx) { return EvaluateFunds(tx, now, settings_.funds); });
  Int128 sum = 0, min = 0;
  std::int64_t low = 0;
  bool any = false;
  const std::int64_t low_runway = std::chrono::duration_cast<std::chrono::seconds>(settings_.funds.low_balance_runway).count();
  for (const auto& v : verdicts) {
    if (v.funds.mode != "prepaid") continue;
    const Int128 b = v.funds.balance_micros();
    sum += b;
    min = any ? std::min(min, b) : b;
    any = true;
    const auto runway = v.funds.runway_seconds();
    if (b <= 0 || (runway && *runway < low_runway)) ++low;
  }
  balances_->Add({{"stat", "sum"}}).Set(static_cast<double>(sum));
  balances_->Add({{"stat", "min"}}).Set(static_cast<double>(min));
  low_->Set(static_cast<double>(low));
  int stopped = 0;
  for (const auto& v : verdicts) {
    if (!v.stop_reason) continue;
    std::vector<std::string> ids;
    {
      pqxx::nontransaction read(conn);
      ids = InstancesToStop(read, v.funds.tenant_id);
    }
    for (const auto& id : ids) {
      const bool done = InTransaction(conn, [&](Tx& tx) {
        const auto out = TerminateInstance(tx, id, v.funds.tenant_id, *v.stop_reason, now);
        if (!out || !out->changed) return false;
        EndBillingNow(tx, id);  // billed up to this decision, whether or not its host can hear it
        RecordAudit(tx, SystemAudit(v.funds.tenant_id, "instance.terminate", id + " " + *v.stop_reason));
        webhooks::Emit(tx, "instance.stopped_for_funds", v.funds.tenant_id,
                       ToJson(boost::json::object{{"instance_id", id},
                                                  {"reason", *v.stop_reason},
                                                  {"balance", FormatMicrosWide(v.funds.balance_micros())},
                                                  {"spent_this_month", FormatMicrosWide(v.funds.spent_this_month_micros)}}),
                       now);
        return true;
      });
      if (!done) continue;
      stopped_->Add({{"reason", *v.stop_reason}}).Increment();
      ++stopped;
      log::Info("instance stopped for funds", {{"tenant_id", v.funds.tenant_id}, {"instance_id", id}, {"reason", *v.stop_reason}});
    }
  }
  return stopped;
}

void Billing::Unmetered(Session& conn) {
  constexpr int kHostsAPass = 2000;  // each host at most 24 hours a pass: a pass stays short
  for (const auto& j : metering::JudgeUnmeteredHours(conn, kHostsAPass, settings_.bill_unmetered_held_time)) {
    const prometheus::Labels pool{{"region", j.region}, {"gpu_model", j.gpu_model}};
    held_->Add(pool).Increment(static_cast<double>(j.held_gpu_ms) / 1000);
    unmetered_->Add(pool).Increment(static_cast<double>(j.unmetered_gpu_ms) / 1000);
    if (j.unmetered_gpu_ms > 0)
      log::Info(settings_.bill_unmetered_held_time ? "held GPU time never metered (billed: billing.unmetered_held_time)"
                                                   : "held GPU time never metered (not billed)",
                {{"region", j.region}, {"gpu_model", j.gpu_model}, {"unmetered_gpu_seconds", j.unmetered_gpu_ms / 1000},
                 {"held_gpu_seconds", j.held_gpu_ms / 1000}});
  }
}

void Billing::Gauges(Session& conn, TimeMs now) {
  pqxx::read_transaction tx(conn, "billing_gauges");
  const BillingGauges g = ReadBillingGauges(tx);
  invoices_->Add({{"status", "draft"}}).Set(static_cast<double>(g.drafts));
  invoices_->Add({{"status", "finalized"}}).Set(static_cast<double>(g.finalized));
  rating_lag_->Set(g.oldest_mark ? std::max(0.0, std::chrono::duration<double>(now - *g.oldest_mark).count()) : 0.0);
}

void Billing::Observe(const PeriodClose& c, double seconds) {
  if (c.already) return;
  close_seconds_->Observe(seconds);
  if (c.incomplete) close_incomplete_->Increment();
  Observe(c.billed);
  log::Info(c.incomplete ? "billing period closed incomplete: some hosts had not reported past its end"
                         : "billing period closed",
            {{"period", c.period}, {"invoices", c.invoices}, {"hosts_behind", static_cast<std::int64_t>(c.hosts_behind.size())},
             {"closed_by", c.closed_by}});
}

void Billing::Observe(const BilledDelta& billed) {
  for (const auto& [market, cents] : billed)
    if (cents > 0) billed_->Add({{"market", market}}).Increment(static_cast<double>(cents) * 10'000);
}

void Billing::Failed(const std::string& step) { failures_->Add({{"step", step}}).Increment(); }

}  // namespace spillway
