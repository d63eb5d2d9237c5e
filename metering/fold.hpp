#pragma once
// The hourly rollups' fold (a leader step): usage_hourly, pool_usage_hourly and usage_rated_hourly
// grow by the samples each ingest commit (a tick) stored, instead of being refolded from the hour's
// samples every pass, so that a pass costs what arrived since the last one. An hour is refolded
// whole only when marked so (usage_dirty_hours: a migration, an operator); a price change re-rates
// exactly the instance-hours whose folded samples reach past it.
#include <cstdint>

#include "core/db_fwd.hpp"

namespace spillway::metering {

struct FoldLimits {
  int max_hours = 48;      // whole hours refolded per pass
  int max_ticks = 2'000;   // ingest commits folded per transaction
  int max_chunks = 20;     // transactions of ticks per pass
};
struct FoldPass {
  int hours_refolded = 0;          // whole hours (usage_dirty_hours)
  int instance_hours_rerated = 0;  // re-rated after a price change
  std::int64_t ticks = 0;          // ingest commits folded
  bool caught_up = false;          // nothing was left: the hosts' folded_through moved
  std::int64_t work() const { return hours_refolded + instance_hours_rerated + ticks; }
};

// One pass: refolds the marked hours, re-rates what queued price changes touch, then adds every
// tick not yet folded (in transactions of max_ticks). Each step adds its rows in the transaction
// that takes its marks, so a crash, a failover or a second leader folds nothing twice or never.
// When nothing is left, each host's folded_through moves to its ingest watermark as of the pass's
// start (skipping a host whose row ingest holds right now; the next pass moves it).
FoldPass FoldUsage(Session& conn, const FoldLimits& limits = {});

// Refolds every hour with rollups or samples from scratch, as if each were marked: what the
// incremental fold must equal (the property test compares them row for row).
void MarkEveryHourToRefold(Tx& tx);

}  // namespace spillway::metering
