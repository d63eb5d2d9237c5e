#include "apiserver/billing_steps.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include "core/db.hpp"
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
  for (const char* status : {"draft", "finalized"}) invoices_->Add({{"status", status}});
  for (const char* market : {"on_demand", "spot", "storage"}) billed_->Add({{"market", market}});
  for (const char* step : {"billing_drafts", "billing_close", "billing_gauges", "api_close"}) failures_->Add({{"step", step}});
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
