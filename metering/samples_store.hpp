#pragma once
// Metering's store for ingest: the batch ledger, host watermarks, the GPUs and allocation history a
// batch is checked against, daily partitions, and the COPY of samples. SQL lives in the .cpp.
#include <pqxx/pqxx>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.hpp"
#include "core/db_fwd.hpp"
#include "core/duration.hpp"

namespace spillway::metering {

// Who held a GPU when (gpu_allocation_history), as ingest checks a sample against it.
struct AllocationSpan {
  std::string instance_id, host_id;
  int gpu_index = 0;
  TimeMs from{};
  std::optional<TimeMs> to;  // still held
};

using HostSeq = std::pair<std::string, std::int64_t>;

// Of `batches`, those already in the ledger.
std::set<HostSeq> CommittedBatches(Tx& tx, const std::vector<HostSeq>& batches);
// (host, gpu_index) of every GPU of `hosts`.
std::set<std::pair<std::string, int>> HostGpuIndices(Tx& tx, const std::vector<std::string>& hosts);
// Every allocation of `instances` on `hosts`, and the database's clock as the statement read them
// (the clock gpu_allocation_history is stamped by, to the millisecond as allocation times are read):
// an open hold is known to be held up to then. No allocation, no clock: none is needed.
struct HeldGpus {
  std::vector<AllocationSpan> spans;
  std::optional<TimeMs> database_now;
};
HeldGpus AllocationsOf(Tx& tx, const std::vector<std::string>& hosts, const std::vector<std::string>& instances);

using GpuKey = std::pair<std::string, int>;  // host, gpu_index
// Locks the per-GPU marks of `gpus` (in key order: concurrent committers take them in one order)
// and returns each GPU's stored_through: the end of the latest sample stored for it (absent when
// none). A committer holds them until it commits, so no two store time of one GPU at once.
std::map<GpuKey, std::optional<TimeMs>> LockGpuMarks(Tx& tx, const std::set<GpuKey>& gpus);
// Moves the marks forward to `marks` (never back).
void AdvanceGpuMarks(Tx& tx, const std::map<GpuKey, std::optional<TimeMs>>& marks);

// A sample that begins before its GPU's mark: it may cover time already stored.
struct OverlapProbe {
  std::size_t index = 0;  // in its batch
  int gpu_index = 0;
  TimeMs begins{}, ends{};
};
// Of `probes` (samples of `host_id`), the indexes of those that overlap a stored sample of their GPU.
// `longest`: the longest interval a stored sample can have (bounds the search).
std::set<std::size_t> OverlapsStored(Tx& tx, const std::string& host_id, const std::vector<OverlapProbe>& probes,
                                     Millis longest);

// Creates the daily partition holding `day` when missing.
void EnsureDayPartition(Tx& tx, TimeMs day);
// usage_samples rows as they are stored (the table's one writer): appended one at a time, in COPY
// text format (tab-separated, \N for null, escaped), and sent with one COPY by CopySamples.
class SampleRows {
 public:
  // Every row carries the tick of the commit that stores it (NextTick).
  explicit SampleRows(std::int64_t tick);
  void Reserve(std::size_t rows) { text_.reserve(rows * 120); }
  // `instance_id` null: no tenant instance owned the time (never billed).
  void Add(TimeMs ts, const std::string& host_id, int gpu_index, const std::optional<std::string>& instance_id,
           std::int64_t interval_ms, int util_pct, std::int64_t mem_used_bytes, std::int64_t power_mw,
           std::int64_t energy_mj);
  bool empty() const { return text_.empty(); }
  std::int64_t tick() const { return tick_; }

 private:
  friend void CopySamples(Tx& tx, SampleRows& rows);
  std::string text_;
  std::int64_t tick_ = 0;
  std::string tick_text_;  // "\t<tick>\n", the end of every row
  // "2026-11-26T17:45:01." of the last row's second: a group's samples share few seconds.
  std::int64_t second_ = INT64_MIN;
  std::string second_text_;
};
void CopySamples(Tx& tx, SampleRows& rows);

struct LedgerRow {
  std::string host_id;
  std::int64_t batch_seq = 0, samples = 0;
  TimeMs sampled_through{};
  std::optional<std::int64_t> clock_skew_ms;
};
// The ledger rows of the batches committed now, and each host's watermark moved forward.
void RecordBatches(Tx& tx, const std::vector<LedgerRow>& rows, TimeMs now);
// A number for this commit's samples (a tick), and its row in ingest_ticks, which says to the fold
// that they are not folded yet: `first` and `last` bound their ts. The row commits with them.
std::int64_t NextTick(Tx& tx);
void RecordTick(Tx& tx, std::int64_t tick, TimeMs first, TimeMs last);
// Deletes up to `limit` ledger rows received before `before`; returns how many.
std::int64_t PruneLedger(Tx& tx, TimeMs before, int limit);
// One more than the highest batch_seq committed for the host (0 for none).
std::int64_t NextBatchSeq(Tx& tx, const std::string& host_id);

struct HostWatermark {
  std::string host_id;
  TimeMs sampled_through{};
  std::int64_t last_batch_seq = 0;
  TimeMs last_batch_at{};
  std::optional<std::int64_t> clock_skew_ms;
};
// The watermarks of hosts that are not retired, oldest first.
std::vector<HostWatermark> ActiveWatermarks(Tx& tx);

}  // namespace spillway::metering
