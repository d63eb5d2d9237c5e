#pragma once
// Billing's leader-run steps (docs/architecture.md, "Billing"): billing_drafts keeps every open
// month's drafts current, billing_close closes each ended month once its usage is in (or
// billing.close_max_wait after it ended), spend_controls evaluates prepaid balances and spend limits
// and stops the instances of tenants out of funds or over their limit, billing_unmetered judges the
// settled hours' held GPU time against the metered, billing_gauges reads the invoice counts. What
// they do is reported to a StepsObserver in integers and times (the apiserver turns it into
// Prometheus series: apiserver/billing_metrics): billing/ has no floating point. A failing step is
// reported (Failed) and rethrown, never only logged.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "billing/exact_amount.hpp"
#include "billing/invoices.hpp"
#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway {
class PeriodicSteps;
}

namespace spillway::billing {

class StepsObserver {
 public:
  virtual ~StepsObserver() = default;
  // Money rated onto invoices, in cents per market, as drafts grow and periods close.
  virtual void Billed(const BilledDelta& billed) = 0;
  // A period closed (by the step or through the API), and how long its transaction took.
  virtual void Closed(const PeriodClose& close, std::chrono::steady_clock::duration took) = 0;
  // Prepaid balances after an evaluation: their sum and the lowest (µ$), and how many are low.
  virtual void Balances(Int128 sum_micros, Int128 min_micros, std::int64_t low) = 0;
  virtual void StoppedForFunds(const std::string& reason) = 0;
  // A pool's newly judged held and never-metered GPU time.
  virtual void Judged(const std::string& region, const std::string& gpu_model, std::int64_t held_gpu_ms,
                      std::int64_t unmetered_gpu_ms) = 0;
  // Invoices per status, and the oldest usage change not yet drafted (nullopt: none waits).
  virtual void Invoices(std::int64_t drafts, std::int64_t finalized, std::optional<std::chrono::milliseconds> rating_lag) = 0;
  virtual void Failed(const std::string& step) = 0;
};

class Steps {
 public:
  Steps(BillingSettings settings, StepsObserver& observer) : settings_(std::move(settings)), observer_(observer) {}

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
  // Judges newly settled hours of held GPU time (metering::JudgeUnmeteredHours).
  void Unmetered(Session& conn);

 private:
  BillingSettings settings_;
  StepsObserver& observer_;
};

}  // namespace spillway::billing
