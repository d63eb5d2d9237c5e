#pragma once
// Billing's metrics, and its leader-run steps (billing/steps) as the apiserver runs them: the steps
// report in integers, this turns that into Prometheus series (floating point, which billing/ has
// none of). The steps (docs/architecture.md, "Billing"): billing_drafts keeps
// every open month's drafts current, billing_close closes each ended month once its usage is in (or
// billing.close_max_wait after it ended), billing_gauges sets the gauges, billing_unmetered judges
// the settled hours' held GPU time against the metered (spillway_unmetered_held_gpu_seconds_total,
// spillway_held_gpu_seconds_total, per pool). A failing step is counted
// in spillway_billing_failures_total{step}, never only logged.
#include <chrono>
#include <string>

#include "billing/invoices.hpp"
#include "billing/steps.hpp"
#include "core/db_fwd.hpp"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace spillway {
class PeriodicSteps;
using billing::BilledDelta;
using billing::BillingSettings;
using billing::PeriodClose;

class Billing : public billing::StepsObserver {
 public:
  Billing(BillingSettings settings, prometheus::Registry& registry);

  const BillingSettings& settings() const { return steps_.settings(); }
  void Register(PeriodicSteps& steps, Millis draft_interval) { steps_.Register(steps, draft_interval); }
  billing::Steps& steps() { return steps_; }

  // What a close did (by the step or through the API), for the metrics.
  void Observe(const PeriodClose& close, double seconds);
  void Observe(const BilledDelta& billed);

  // billing::StepsObserver
  void Billed(const BilledDelta& billed) override;
  void Closed(const PeriodClose& close, std::chrono::steady_clock::duration took) override;
  void Balances(billing::Int128 sum_micros, billing::Int128 min_micros, std::int64_t low) override;
  void StoppedForFunds(const std::string& reason) override;
  void Judged(const std::string& region, const std::string& gpu_model, std::int64_t held_gpu_ms,
              std::int64_t unmetered_gpu_ms) override;
  void Invoices(std::int64_t drafts, std::int64_t finalized, std::optional<std::chrono::milliseconds> rating_lag) override;
  void Failed(const std::string& step) override;

 private:
  billing::Steps steps_;
  prometheus::Family<prometheus::Gauge>* invoices_;
  prometheus::Family<prometheus::Counter>* billed_;
  prometheus::Family<prometheus::Counter>* failures_;
  prometheus::Gauge* rating_lag_;
  prometheus::Histogram* close_seconds_;
  prometheus::Counter* close_incomplete_;
  prometheus::Family<prometheus::Counter>* stopped_;
  prometheus::Family<prometheus::Gauge>* balances_;
  prometheus::Gauge* low_;
  prometheus::Family<prometheus::Counter>* unmetered_;
  prometheus::Family<prometheus::Counter>* held_;
};

}  // namespace spillway
