#include "metering/samples_store.hpp"

#include <charconv>

#include "core/db.hpp"
#include "core/sql.hpp"

#include <pqxx/tablewriter>

#include <algorithm>
#include <map>
#include <tuple>

namespace spillway::metering {
namespace {

const Statement kCommittedBatches{"metering_committed_batches", R"sql(
SELECT b.host_id, b.batch_seq FROM ingest_batches b
JOIN unnest($1::text[], $2::bigint[]) AS q (host_id, batch_seq)
  ON b.host_id = q.host_id AND b.batch_seq = q.batch_seq)sql"};
const Statement kHostGpuIndices{"metering_host_gpus",
                                "SELECT host_id, gpu_index FROM gpus WHERE host_id = ANY($1::text[])"};
const Statement kAllocations{"metering_allocations",
                             "SELECT instance_id, host_id, gpu_index, " SPW_EPOCH_MS("allocated_at") " AS from_ms, "
                             SPW_EPOCH_MS("released_at") " AS to_ms, " SPW_EPOCH_MS("now()") " AS now_ms "
                             "FROM gpu_allocation_history "
                             "WHERE instance_id = ANY($2::text[]) AND host_id = ANY($1::text[])"};
const Statement kLockGpuMarks{"metering_lock_gpu_marks", R"sql(
SELECT m.host_id, m.gpu_index, )sql" SPW_EPOCH_MS("m.stored_through") R"sql( AS through_ms
FROM gpu_sample_marks m JOIN unnest($1::text[], $2::integer[]) AS q (host_id, gpu_index)
  ON m.host_id = q.host_id AND m.gpu_index = q.gpu_index
ORDER BY m.host_id, m.gpu_index FOR UPDATE OF m)sql"};
const Statement kAdvanceGpuMarks{"metering_advance_gpu_marks", R"sql(
UPDATE gpu_sample_marks m
SET stored_through = greatest(m.stored_through, to_timestamp(q.through_ms / 1000.0))
FROM unnest($1::text[], $2::integer[], $3::bigint[]) AS q (host_id, gpu_index, through_ms)
WHERE m.host_id = q.host_id AND m.gpu_index = q.gpu_index)sql"};
// A stored sample (ts - interval_ms, ts] overlaps [begins, ends) when it ends after `begins` and
// begins before `ends`; it ends before `ends` + the longest interval, which bounds the ts range read.
const Statement kOverlapsStored{"metering_overlaps_stored", R"sql(
SELECT q.i FROM unnest($2::integer[], $3::integer[], $4::bigint[], $5::bigint[]) AS q (i, gpu_index, begins_ms, ends_ms)
WHERE EXISTS (
  SELECT 1 FROM usage_samples s
  WHERE s.host_id = $1 AND s.gpu_index = q.gpu_index
    AND s.ts > to_timestamp(q.begins_ms / 1000.0) AND s.ts < to_timestamp((q.ends_ms + $6::bigint) / 1000.0)
    AND s.ts - s.interval_ms * interval '1 millisecond' < to_timestamp(q.ends_ms / 1000.0)))sql"};
const Statement kEnsurePartition{"metering_ensure_partition",
                                 "SELECT usage_samples_partition(to_timestamp($1::bigint / 1000.0))"};
const Statement kInsertLedger{"metering_insert_ledger", R"sql(
INSERT INTO ingest_batches (host_id, batch_seq, samples, sampled_through, received_at)
SELECT host_id, batch_seq, samples, to_timestamp(through_ms / 1000.0), to_timestamp($5::bigint / 1000.0)
FROM unnest($1::text[], $2::bigint[], $3::integer[], $4::bigint[]) AS q (host_id, batch_seq, samples, through_ms))sql"};
// One row per host (the caller folds a host's batches first): the watermark only moves forward. In
// host order, so two groups committing at once (metering.ingest_committers) lock the rows, and
// insert a storm's new hosts, in one order instead of deadlocking.
const Statement kUpsertWatermarks{"metering_upsert_watermarks", R"sql(
INSERT INTO host_watermarks AS w (host_id, sampled_through, last_batch_seq, last_batch_at, clock_skew_ms)
SELECT host_id, to_timestamp(through_ms / 1000.0), batch_seq, to_timestamp($5::bigint / 1000.0), skew_ms
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS q (host_id, through_ms, batch_seq, skew_ms)
ORDER BY host_id
ON CONFLICT (host_id) DO UPDATE SET
  sampled_through = greatest(w.sampled_through, EXCLUDED.sampled_through),
  last_batch_seq = greatest(w.last_batch_seq, EXCLUDED.last_batch_seq),
  last_batch_at = EXCLUDED.last_batch_at,
  clock_skew_ms = coalesce(EXCLUDED.clock_skew_ms, w.clock_skew_ms))sql"};
const Statement kNextTick{"metering_next_tick", "SELECT nextval('ingest_tick_seq') AS tick"};
// A new key: no row lock anyone else takes, whatever else commits meanwhile.
const Statement kRecordTick{"metering_record_tick",
                            "INSERT INTO ingest_ticks (tick, started_at, first_ts, last_ts) "
                            "VALUES ($1, now(), " SPW_TS(2) ", " SPW_TS(3) ")"};
const Statement kPruneLedger{"metering_prune_ledger", R"sql(
DELETE FROM ingest_batches WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM ingest_batches WHERE received_at < to_timestamp($1::bigint / 1000.0) LIMIT $2)))sql"};
const Statement kNextBatchSeq{"metering_next_batch_seq",
                              "SELECT coalesce((SELECT last_batch_seq + 1 FROM host_watermarks WHERE host_id = $1), 0) AS next_seq"};
const Statement kActiveWatermarks{"metering_active_watermarks",
                                  "SELECT w.host_id, " SPW_EPOCH_MS("w.sampled_through") " AS through_ms, "
                                  "w.last_batch_seq, " SPW_EPOCH_MS("w.last_batch_at") " AS last_ms, w.clock_skew_ms "
                                  "FROM host_watermarks w JOIN hosts h ON h.id = w.host_id "
                                  "WHERE h.state <> 'disabled' ORDER BY w.sampled_through"};

}  // namespace

std::set<HostSeq> CommittedBatches(Tx& tx, const std::vector<HostSeq>& batches) {
  std::vector<std::string> hosts;
  std::vector<std::int64_t> seqs;
  for (const auto& [h, s] : batches) {
    hosts.push_back(h);
    seqs.push_back(s);
  }
  std::set<HostSeq> out;
  // Planned for each call, not prepared: ingest_batches grows by a thousand rows a second from
  // empty, and a plan cached while it was small (a hash join over a sequential scan) stays cached
  // as it grows. Measured at 10,000 hosts: 3.5 ms a call and a third of a core of PostgreSQL, against
  // 0.1 ms for the index probes planned fresh.
  for (const auto& r : tx.exec_params(kCommittedBatches.sql, TextArrayLiteral(hosts), Int64ArrayLiteral(seqs)))
    out.emplace(r["host_id"].as<std::string>(), r["batch_seq"].as<std::int64_t>());
  return out;
}

std::set<std::pair<std::string, int>> HostGpuIndices(Tx& tx, const std::vector<std::string>& hosts) {
  std::set<std::pair<std::string, int>> out;
  for (const auto& r : tx.exec_prepared(kHostGpuIndices.name, TextArrayLiteral(hosts)))
    out.emplace(r["host_id"].as<std::string>(), r["gpu_index"].as<int>());
  return out;
}

HeldGpus AllocationsOf(Tx& tx, const std::vector<std::string>& hosts, const std::vector<std::string>& instances) {
  HeldGpus out;
  if (instances.empty()) return out;
  for (const auto& r : tx.exec_prepared(kAllocations.name, TextArrayLiteral(hosts), TextArrayLiteral(instances))) {
    out.spans.push_back({r["instance_id"].as<std::string>(), r["host_id"].as<std::string>(), r["gpu_index"].as<int>(),
                         *TimeFrom(r["from_ms"]), TimeFrom(r["to_ms"])});
    out.database_now = TimeFrom(r["now_ms"]);  // now() is one value for the whole transaction
  }
  return out;
}

std::map<GpuKey, std::optional<TimeMs>> LockGpuMarks(Tx& tx, const std::set<GpuKey>& gpus) {
  std::map<GpuKey, std::optional<TimeMs>> out;
  if (gpus.empty()) return out;
  std::vector<std::string> hosts;
  std::vector<std::int64_t> indexes;
  for (const auto& [h, g] : gpus) {
    hosts.push_back(h);
    indexes.push_back(g);
  }
  for (const auto& r : tx.exec_prepared(kLockGpuMarks.name, TextArrayLiteral(hosts), Int64ArrayLiteral(indexes)))
    out[{r["host_id"].as<std::string>(), r["gpu_index"].as<int>()}] = TimeFrom(r["through_ms"]);
  return out;
}

void AdvanceGpuMarks(Tx& tx, const std::map<GpuKey, std::optional<TimeMs>>& marks) {
  std::vector<std::string> hosts;
  std::vector<std::int64_t> indexes, through;
  for (const auto& [key, mark] : marks) {
    if (!mark) continue;
    hosts.push_back(key.first);
    indexes.push_back(key.second);
    through.push_back(EpochMs(*mark));
  }
  if (!hosts.empty())
    tx.exec_prepared(kAdvanceGpuMarks.name, TextArrayLiteral(hosts), Int64ArrayLiteral(indexes),
                     Int64ArrayLiteral(through));
}

std::set<std::size_t> OverlapsStored(Tx& tx, const std::string& host_id, const std::vector<OverlapProbe>& probes,
                                     Millis longest) {
  std::set<std::size_t> out;
  if (probes.empty()) return out;
  std::vector<std::int64_t> index, gpu, begins, ends;
  for (const auto& p : probes) {
    index.push_back(static_cast<std::int64_t>(p.index));
    gpu.push_back(p.gpu_index);
    begins.push_back(EpochMs(p.begins));
    ends.push_back(EpochMs(p.ends));
  }
  for (const auto& r : tx.exec_prepared(kOverlapsStored.name, host_id, Int64ArrayLiteral(index), Int64ArrayLiteral(gpu),
                                        Int64ArrayLiteral(begins), Int64ArrayLiteral(ends), longest.count()))
    out.insert(static_cast<std::size_t>(r["i"].as<std::int64_t>()));
  return out;
}

void EnsureDayPartition(Tx& tx, TimeMs day) { tx.exec_prepared(kEnsurePartition.name, EpochMs(day)); }

namespace {
void AppendInt(std::string& out, std::int64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}
// COPY text format: backslash, tab, newline and carriage return escaped.
void AppendCopyText(std::string& out, const std::string& s) {
  for (char c : s) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      default: out += c;
    }
  }
}
}  // namespace

SampleRows::SampleRows(std::int64_t tick) : tick_(tick) {
  tick_text_ = '\t';
  AppendInt(tick_text_, tick);
  tick_text_ += '\n';
}

void SampleRows::Add(TimeMs ts, const std::string& host_id, int gpu_index, const std::optional<std::string>& instance_id,
                     std::int64_t interval_ms, int util_pct, std::int64_t mem_used_bytes, std::int64_t power_mw,
                     std::int64_t energy_mj) {
  // ts as "2026-11-26T17:45:01.123Z"
  const std::int64_t ms = EpochMs(ts);
  const std::int64_t second = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
  if (second != second_) {
    second_ = second;
    second_text_ = FormatTime(FromEpochMs(second * 1000));
    second_text_.resize(second_text_.size() - 4);  // keep "...:SS."
  }
  text_ += second_text_;
  const int milli = static_cast<int>(ms - second * 1000);
  text_ += static_cast<char>('0' + milli / 100);
  text_ += static_cast<char>('0' + milli / 10 % 10);
  text_ += static_cast<char>('0' + milli % 10);
  text_ += "Z\t";
  AppendCopyText(text_, host_id);
  text_ += '\t';
  AppendInt(text_, gpu_index);
  text_ += '\t';
  if (instance_id) AppendCopyText(text_, *instance_id);
  else text_ += "\\N";
  for (std::int64_t v : {interval_ms, static_cast<std::int64_t>(util_pct), mem_used_bytes, power_mw, energy_mj}) {
    text_ += '\t';
    AppendInt(text_, v);
  }
  text_ += tick_text_;
}

void CopySamples(Tx& tx, SampleRows& rows) {
  if (rows.text_.empty()) return;
  rows.text_.pop_back();  // the writer ends the last line
  // One COPY for the whole group. tablewriter is libpqxx 6's way to hand COPY pre-formatted text
  // (stream_to would format every field again); write_raw_line sends it in one PQputCopyData.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  static const std::vector<std::string> kColumns = {"ts",       "host_id",        "gpu_index", "instance_id",
                                                    "interval_ms", "util_pct", "mem_used_bytes", "power_mw",
                                                    "energy_mj",   "tick"};
  pqxx::tablewriter writer(tx, "usage_samples", kColumns.begin(), kColumns.end());
  writer.write_raw_line(rows.text_);
  writer.complete();
#pragma GCC diagnostic pop
  rows.text_.clear();
}

void RecordBatches(Tx& tx, const std::vector<LedgerRow>& unordered, TimeMs now) {
  if (unordered.empty()) return;
  // In (host, batch_seq) order, so that concurrent committers take the keys' locks in one order.
  std::vector<LedgerRow> rows = unordered;
  std::sort(rows.begin(), rows.end(),
            [](const LedgerRow& a, const LedgerRow& b) { return std::tie(a.host_id, a.batch_seq) < std::tie(b.host_id, b.batch_seq); });
  std::vector<std::string> hosts;
  std::vector<std::int64_t> seqs, samples, through;
  std::map<std::string, LedgerRow> per_host;  // the newest of each host's batches
  for (const auto& r : rows) {
    hosts.push_back(r.host_id);
    seqs.push_back(r.batch_seq);
    samples.push_back(r.samples);
    through.push_back(EpochMs(r.sampled_through));
    auto [it, fresh] = per_host.emplace(r.host_id, r);
    if (!fresh) {
      LedgerRow& h = it->second;
      if (r.sampled_through > h.sampled_through) h.sampled_through = r.sampled_through;
      if (r.batch_seq > h.batch_seq) {
        h.batch_seq = r.batch_seq;
        if (r.clock_skew_ms) h.clock_skew_ms = r.clock_skew_ms;
      }
    }
  }
  tx.exec_prepared(kInsertLedger.name, TextArrayLiteral(hosts), Int64ArrayLiteral(seqs), Int64ArrayLiteral(samples),
                   Int64ArrayLiteral(through), EpochMs(now));
  std::vector<std::string> w_hosts;
  std::vector<std::int64_t> w_through, w_seq;
  std::string skews = "{";
  for (const auto& [host, r] : per_host) {
    w_hosts.push_back(host);
    w_through.push_back(EpochMs(r.sampled_through));
    w_seq.push_back(r.batch_seq);
    skews += (skews.size() > 1 ? "," : "") + (r.clock_skew_ms ? std::to_string(*r.clock_skew_ms) : std::string("NULL"));
  }
  skews += "}";
  tx.exec_prepared(kUpsertWatermarks.name, TextArrayLiteral(w_hosts), Int64ArrayLiteral(w_through),
                   Int64ArrayLiteral(w_seq), skews, EpochMs(now));
}

std::int64_t NextTick(Tx& tx) { return tx.exec_prepared1(kNextTick.name)["tick"].as<std::int64_t>(); }

void RecordTick(Tx& tx, std::int64_t tick, TimeMs first, TimeMs last) {
  tx.exec_prepared(kRecordTick.name, tick, EpochMs(first), EpochMs(last));
}

std::int64_t PruneLedger(Tx& tx, TimeMs before, int limit) {
  return tx.exec_prepared(kPruneLedger.name, EpochMs(before), limit).affected_rows();
}

std::int64_t NextBatchSeq(Tx& tx, const std::string& host_id) {
  return tx.exec_prepared(kNextBatchSeq.name, host_id)[0]["next_seq"].as<std::int64_t>();
}

std::vector<HostWatermark> ActiveWatermarks(Tx& tx) {
  std::vector<HostWatermark> out;
  for (const auto& r : tx.exec_prepared(kActiveWatermarks.name))
    out.push_back({r["host_id"].as<std::string>(), *TimeFrom(r["through_ms"]), r["last_batch_seq"].as<std::int64_t>(),
                   *TimeFrom(r["last_ms"]), IntFrom(r["clock_skew_ms"])});
  return out;
}

}  // namespace spillway::metering
