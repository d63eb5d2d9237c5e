#include "apiserver/billing_metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include "core/log.hpp"

namespace spillway {
using namespace billing;

using namespace prometheus;

Billing::Billing(BillingSettings settings, Registry& registry) : steps_(std::move(settings), *this) {
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

void Billing::Billed(const BilledDelta& billed) { Observe(billed); }

void Billing::Closed(const PeriodClose& close, std::chrono::steady_clock::duration took) {
  Observe(close, std::chrono::duration<double>(took).count());
}

void Billing::Balances(billing::Int128 sum_micros, billing::Int128 min_micros, std::int64_t low) {
  balances_->Add({{"stat", "sum"}}).Set(static_cast<double>(sum_micros));
  balances_->Add({{"stat", "min"}}).Set(static_cast<double>(min_micros));
  low_->Set(static_cast<double>(low));
}

void Billing::StoppedForFunds(const std::string& reason) { stopped_->Add({{"reason", reason}}).Increment(); }

void Billing::Judged(const std::string& region, const std::string& gpu_model, std::int64_t held_gpu_ms,
                     std::int64_t unmetered_gpu_ms) {
  const prometheus::Labels pool{{"region", region}, {"gpu_model", gpu_model}};
  held_->Add(pool).Increment(static_cast<double>(held_gpu_ms) / 1000);
  unmetered_->Add(pool).Increment(static_cast<double>(unmetered_gpu_ms) / 1000);
}

void Billing::Invoices(std::int64_t drafts, std::int64_t finalized, std::optional<std::chrono::milliseconds> rating_lag) {
  invoices_->Add({{"status", "draft"}}).Set(static_cast<double>(drafts));
  invoices_->Add({{"status", "finalized"}}).Set(static_cast<double>(finalized));
  rating_lag_->Set(rating_lag ? std::chrono::duration<double>(*rating_lag).count() : 0.0);
}

}  // namespace spillway
