#pragma once
// Billing's leader-run steps and its metrics (here, not in billing/: Prometheus speaks floating point,
// and billing/ has none) (docs/architecture.md, "Billing"): billing_drafts keeps
// every open month's drafts current, billing_close closes each ended month once its usage is in (or
// billing.close_max_wait after it ended), billing_gauges sets the gauges, billing_unmetered judges
// the settled hours' held GPU time against the metered (spillway_unmetered_held_gpu_seconds_total,
// spillway_held_gpu_seconds_total, per pool). A failing step is counted
// in spillway_billing_failures_total{step}, never only logged.
#include <chrono>
#include <string>

#include "billing/invoices.hpp"
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

class Billing {
 public:
  Billing(BillingSettings settings, prometheus::Registry& registry);

  const BillingSettings& settings() const { return settings_; }
  void Register(PeriodicSteps& steps, Millis draft_interval);

  // The steps' bodies (public for tests).
  void Drafts(Session& conn, TimeMs now);
  // Closes every ended month that is ready, or past close_max_wait, oldest first. Returns how many.
  int CloseDue(Session& conn, TimeMs now);
  void Gauges(Session& conn, TimeMs now);
  // Evaluates prepaid balances and spend limits (alerts once per crossing) and stops the instances
  // of tenants out of funds or over their limit. Returns how many it stopped.
  int SpendControls(Session& conn, TimeMs now);
  // Judges newly settled hours of held GPU time (metering::JudgeUnmeteredHours) into the counters.
  void Unmetered(Session& conn);

  // What a close did (by the step or through the API), for the metrics.
  void Observe(const PeriodClose& close, double seconds);
  void Observe(const BilledDelta& billed);
  void Failed(const std::string& step);

 private:
  BillingSettings settings_;
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
