#pragma once
// Rating (docs/architecture.md, "Billing"): a tenant's metered GPU time in a window, priced at the
// price in effect at each stored sample's time, as exact amounts per instance. The metering fold
// keeps each hour's GPU-ms per instance and price (usage_rated_hourly); rating adds them up: every
// cent is Σ gpu_ms × price / 3,600,000 over those rows, rounded half-even once per line.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "billing/exact_amount.hpp"
#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway::billing {

// One stored row: an instance's GPU-ms in an hour at one price (nullopt: no price was in effect).
struct RatedUsage {
  std::string instance_id, market;
  TimeMs hour{};
  std::int64_t gpu_ms = 0;
  std::optional<std::int64_t> price_micros;
  bool unmetered = false;  // held GPU time no sample covered, billed (billing.unmetered_held_time = bill)
};

// One instance's usage in the window: its GPU-ms, their exact amount, and GPU-ms no price covered
// (never billed silently at zero: a period with any cannot be closed).
struct UsageLine {
  std::string instance_id, market;
  std::int64_t gpu_ms = 0;
  std::int64_t unpriced_gpu_ms = 0;
  std::int64_t unmetered_gpu_ms = 0;  // of gpu_ms: held, never metered, billed
  ExactAmount amount = ExactAmount::GpuTime();
  // Its GPU-hours with six decimals and its average price per GPU-hour, both rounded half-even
  // (micro-GPU-hours; micro-dollars): what an invoice line shows beside its amount.
  std::int64_t micro_gpu_hours() const;
  std::int64_t average_price_micros() const;
};

// The lines of `rows`, one per instance, in instance id order. Pure.
std::vector<UsageLine> RateUsage(const std::vector<RatedUsage>& rows);

// The rated rows of `tenant_id` in hours [from, to) (whole hours).
std::vector<RatedUsage> RatedUsageOf(Tx& tx, const std::string& tenant_id, TimeMs from, TimeMs to);

}  // namespace spillway::billing
