#pragma once
// What is read from the rollups (metering/fold folds them): a tenant's usage with metering
// coverage, the fleet's pool utilisation, the unmetered-time judge and sample retention.
#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"
#include "core/duration.hpp"

namespace spillway::metering {

// Judges the settled hours of up to max_hosts hosts (at most 24 hours of each), in one transaction:
// per instance-hour, the GPU time its holds held against what was metered (usage_hourly); an hour
// with time held and never metered is written to unmetered_hourly. An hour is settled once its
// host's folded_through is past its end. Returns, for every pool, the held and the unmetered GPU-ms judged
// (for the counters); its cost follows the hours newly settled, not history. With `bill`
// (billing.unmetered_held_time = bill) that time is also rated (usage_rated_hourly, marked unmetered)
// at the price in effect at the hour's start, and its tenant-month marked for the drafts.
struct UnmeteredJudged {
  std::string region, gpu_model;
  std::int64_t held_gpu_ms = 0, unmetered_gpu_ms = 0;
};
std::vector<UnmeteredJudged> JudgeUnmeteredHours(Session& conn, int max_hosts, bool bill = false);

// Drops each daily partition of usage_samples that ended `retention` before `now`, once every hour
// of it is folded (no hour marked to refold, no unfolded tick in it) and its month is a closed
// billing period. Returns the names dropped.
std::vector<std::string> DropExpiredPartitions(pqxx::connection& conn, TimeMs now, Millis retention);

struct RollupHealth {
  double lag_seconds = 0;           // now - the oldest unfolded change (0: none)
  std::optional<double> coverage;   // metered / running GPU-time of the last 24 h, up to the fold
};
RollupHealth ReadRollupHealth(Tx& tx, TimeMs now);

struct UsageQuery {
  std::string tenant_id;
  std::string instance_id;  // "" for all
  TimeMs from{}, to{};      // whole UTC hours
  bool daily = false;
};
struct UsageRow {
  std::string instance_id;
  TimeMs period{};
  std::int64_t gpu_ms = 0, samples = 0, energy_mj = 0, mem_peak_bytes = 0;
  double util_pct_mean = 0;
};
struct InstanceUsage {
  std::string instance_id;
  std::int64_t metered_gpu_ms = 0;
  std::int64_t running_gpu_ms = 0;            // by its lifecycle, up to complete_through
  std::optional<TimeMs> complete_through;     // its host's samples are all folded up to here
  // The GPU time it held (gpu_allocation_history) within the window, up to the later of
  // complete_through and the end of its latest metered sample: metered time lies inside it, so
  // metered / held is never above 1.
  std::int64_t held_gpu_ms = 0;
};
struct UsageReport {
  std::vector<UsageRow> rows;
  std::vector<InstanceUsage> instances;  // every instance that ran in the window
  std::optional<TimeMs> complete_through;  // the oldest of theirs
};
UsageReport TenantUsage(Tx& tx, const UsageQuery& q, TimeMs now);

// An instance attributed more GPU time (its rollups, all hours) than it held its GPUs (its holds,
// open ones up to the database's now): what must never happen.
struct Overattribution {
  std::string instance_id;
  std::int64_t attributed_ms = 0, held_ms = 0;
  std::int64_t excess_ms() const { return attributed_ms - held_ms; }
};
// Every such instance among those with usage in hours from `since` on.
std::vector<Overattribution> OverattributedInstances(Tx& tx, TimeMs since);

struct PoolUsageRow {
  std::string region, gpu_model;
  TimeMs period{};
  std::int64_t allocated_gpu_ms = 0, idle_gpu_ms = 0, samples = 0, energy_mj = 0;
  double util_pct_mean = 0;
};
std::vector<PoolUsageRow> FleetUsage(Tx& tx, TimeMs from, TimeMs to, const std::string& region,
                                     const std::string& gpu_model, bool daily);

}  // namespace spillway::metering
