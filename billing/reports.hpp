#pragma once
// The spare-capacity revenue report (docs/architecture.md, "Billing"): per pool and market, what a
// month's GPU time sold for, the spot discount given (those GPU-hours at the on-demand list price at
// each sample's time, less what they were billed), the spare GPU-hours offered as spot against those
// sold, storage revenue per region, and the GPU time held but never metered per pool (not billed; its
// value at the on-demand list price in effect at each hour's start). Every amount exact until it is
// rounded, once, per figure.
#include <cstdint>
#include <string>
#include <vector>

#include "billing/exact_amount.hpp"
#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway::billing {

struct RevenueLine {
  std::string region, gpu_model, market;
  std::int64_t gpu_ms = 0;
  std::int64_t unpriced_gpu_ms = 0;               // no price was in effect: not billed
  ExactAmount billed = ExactAmount::GpuTime();    // at the price in effect at each sample's time
  ExactAmount list = ExactAmount::GpuTime();      // the same GPU time at the on-demand list price
  std::int64_t discount_cents() const { return list.Cents() - billed.Cents(); }
};

struct PoolSpare {
  std::string region, gpu_model;
  std::int64_t idle_gpu_ms = 0;       // metered GPUs that ran nothing (pool_usage_hourly)
  std::int64_t spot_sold_gpu_ms = 0;  // GPU time sold as spot
  std::int64_t offered_gpu_ms() const { return idle_gpu_ms + spot_sold_gpu_ms; }
};

struct StorageRevenue {
  std::string region;
  std::int64_t gb_ms = 0;
  ExactAmount amount;
  explicit StorageRevenue(int days) : amount(ExactAmount::Storage(days)) {}
};

// GPU time instances held that no sample covered (unmetered_hourly), judged once settled.
struct PoolUnmetered {
  std::string region, gpu_model;
  std::int64_t gpu_ms = 0;
  ExactAmount list = ExactAmount::GpuTime();    // at the on-demand list price: what it was worth
  ExactAmount billed = ExactAmount::GpuTime();  // what was billed of it (billing.unmetered_held_time = bill)
};

struct RevenueReport {
  Month month;
  bool closed = false;  // the month is closed: its figures are final (late usage aside)
  std::vector<RevenueLine> lines;      // by region, model, market
  std::vector<PoolSpare> pools;        // by region, model
  std::vector<StorageRevenue> storage; // by region
  std::vector<PoolUnmetered> unmetered; // by region, model
};

// The report of `month` as of `now`: an open month's so far (storage up to the volume metering's
// hour, and never past `now`).
RevenueReport RevenueOf(Tx& tx, const Month& month, TimeMs now);

}  // namespace spillway::billing
