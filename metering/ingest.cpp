#include "metering/ingest.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <algorithm>
#include <future>
#include <numeric>

#include "core/log.hpp"
#include "metering/attribution.hpp"
#include "metering/usage.hpp"

namespace spillway::metering {
namespace {

constexpr std::int64_t kDayMs = 24LL * 3600 * 1000;

IngestResult Rejected(std::optional<std::size_t> index, std::string message) {
  return {IngestResult::Kind::kRejected, 0, index, std::move(message)};
}

}  // namespace

IngestSettings IngestSettings::From(const Config& c) {
  IngestSettings s;
  s.rules.sample_interval = c.Duration("agent.sample_interval");
  s.rules.skew_tolerance = c.Duration("metering.clock_skew_tolerance");
  s.rules.max_sample_age = c.Duration("metering.max_sample_age");
  s.max_queued_batches = static_cast<std::size_t>(c.Int("metering.ingest_queue"));
  s.group_max_samples = static_cast<std::size_t>(c.Int("metering.group_max_samples"));
  s.partitions_ahead = static_cast<int>(c.Int("metering.partitions_ahead"));
  s.rollup_interval = c.Duration("metering.rollup_interval");
  s.retention = c.Duration("metering.retention");
  s.committers = static_cast<int>(c.Int("metering.ingest_committers"));
  s.retry_after = c.Duration("database.retry_after");
  return s;
}

std::optional<IngestResult> CheckBatch(const protocol::SampleBatch& batch, const std::string& host_id,
                                       const std::set<std::pair<std::string, int>>& gpus,
                                       const std::vector<AllocationSpan>& allocations, TimeMs now,
                                       const IngestRules& rules, const std::set<std::size_t>& overlapping) {
  const TimeMs latest = now + rules.skew_tolerance;
  const std::int64_t max_interval = 3 * rules.sample_interval.count();
  std::vector<std::size_t> unheld;
  std::string first_unheld;
  for (std::size_t i = 0; i < batch.samples.size(); ++i) {
    const auto& s = batch.samples[i];
    const std::string at = "samples[" + std::to_string(i) + "].";
    if (!gpus.count({host_id, s.gpu_index}))
      return Rejected(i, at + "gpu_index: this host has no GPU " + std::to_string(s.gpu_index));
    if (s.interval_ms > max_interval)
      return Rejected(i, at + "interval_ms: " + std::to_string(s.interval_ms) + " is more than 3 sample intervals (" +
                             std::to_string(max_interval) + ")");
    if (s.ts_ms > latest)
      return Rejected(i, at + "ts_ms: " + FormatTime(s.ts_ms) + " is ahead of the server's clock (" + FormatTime(now) +
                             ") by more than " + FormatDuration(rules.skew_tolerance));
    const TimeMs begins = s.ts_ms - Millis(s.interval_ms);
    if (begins < now - rules.max_sample_age)
      return Rejected(i, at + "ts_ms: " + FormatTime(s.ts_ms) + " is older than metering.max_sample_age (" +
                             FormatDuration(rules.max_sample_age) + ")");
    if (s.instance_id) {
      const bool held = std::any_of(allocations.begin(), allocations.end(), [&](const AllocationSpan& a) {
        return a.instance_id == *s.instance_id && a.host_id == host_id && a.gpu_index == s.gpu_index &&
               begins >= a.from - rules.skew_tolerance && (!a.to || s.ts_ms <= *a.to + rules.skew_tolerance);
      });
      if (!held) {
        // Not a malformed sample: the control plane took the GPU back while the host could not hear
        // it. Reported for every such sample, once nothing else is wrong with the batch.
        if (unheld.empty())
          first_unheld = at + "instance_id: " + *s.instance_id + " did not hold GPU " + std::to_string(s.gpu_index) +
                         " of this host from " + FormatTime(begins) + " to " + FormatTime(s.ts_ms);
        unheld.push_back(i);
      }
    }
  }
  // No two samples of one GPU may cover the same time: each millisecond is billed once.
  std::vector<std::size_t> order(batch.samples.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto& x = batch.samples[a];
    const auto& y = batch.samples[b];
    return std::tie(x.gpu_index, x.ts_ms, a) < std::tie(y.gpu_index, y.ts_ms, b);
  });
  for (std::size_t k = 1; k < order.size(); ++k) {
    const auto& prev = batch.samples[order[k - 1]];
    const auto& cur = batch.samples[order[k]];
    if (prev.gpu_index == cur.gpu_index && cur.ts_ms - Millis(cur.interval_ms) < prev.ts_ms)
      return Rejected(std::max(order[k - 1], order[k]),
                      "samples[" + std::to_string(std::max(order[k - 1], order[k])) + "]: overlaps samples[" +
                          std::to_string(std::min(order[k - 1], order[k])) + "] on GPU " +
                          std::to_string(cur.gpu_index));
  }
  if (batch.sampled_through_ms > latest)
    return Rejected(std::nullopt, "sampled_through_ms: " + FormatTime(batch.sampled_through_ms) +
                                      " is ahead of the server's clock (" + FormatTime(now) + ") by more than " +
                                      FormatDuration(rules.skew_tolerance));
  // Repairable: the agent sends the batch again with the unheld samples unattributed and the
  // overlapping ones left out (docs/protocol.md).
  std::vector<std::size_t> overlaps;
  for (const std::size_t i : overlapping)
    if (i < batch.samples.size()) overlaps.push_back(i);
  if (unheld.empty() && overlaps.empty()) return std::nullopt;
  IngestResult r;
  if (!overlaps.empty() && (unheld.empty() || overlaps.front() < unheld.front())) {
    const auto& s = batch.samples[overlaps.front()];
    r = Rejected(overlaps.front(), "samples[" + std::to_string(overlaps.front()) + "]: GPU " +
                                       std::to_string(s.gpu_index) + "'s time from " +
                                       FormatTime(s.ts_ms - Millis(s.interval_ms)) + " to " + FormatTime(s.ts_ms) +
                                       " is already stored (sent before, under another batch_seq)");
  } else {
    r = Rejected(unheld.front(), first_unheld);
  }
  r.unheld = std::move(unheld);
  r.overlapping = std::move(overlaps);
  return r;
}

Ingestor::Ingestor(SessionOptions session, IngestSettings settings, const Clock& clock, prometheus::Registry& registry)
    : session_(std::move(session)), settings_(settings), clock_(clock) {
  using namespace prometheus;
  samples_total_ = &BuildCounter()
                        .Name("spillway_ingest_samples_total")
                        .Help("GPU samples committed (each exactly once)")
                        .Register(registry)
                        .Add({});
  batches_ = &BuildCounter()
                  .Name("spillway_ingest_batches_total")
                  .Help("Sample batches answered, by result: accepted, duplicate (a replay, nothing written), "
                        "rejected (422, nothing written), refused (503: queue full or database unavailable)")
                  .Register(registry);
  accepted_ = &batches_->Add({{"result", "accepted"}});
  duplicate_ = &batches_->Add({{"result", "duplicate"}});
  rejected_ = &batches_->Add({{"result", "rejected"}});
  refused_ = &batches_->Add({{"result", "refused"}});
  unowned_seconds_ = &BuildCounter()
                    .Name("spillway_ingest_unattributed_named_gpu_seconds_total")
                    .Help("GPU time that samples named an instance for but that lay outside its hold of the GPU "
                          "(within the clock-skew tolerance): stored without an owner, never billed")
                    .Register(registry)
                    .Add({});
  overattributed_seconds_ = &BuildCounter()
                           .Name("spillway_metering_overattributed_gpu_seconds_total")
                           .Help("GPU time found attributed to an instance beyond the time it held its GPUs (the "
                                 "leader's metering_attribution_check; must stay 0)")
                           .Register(registry)
                           .Add({});
  commit_seconds_ = &BuildHistogram()
                         .Name("spillway_ingest_commit_seconds")
                         .Help("Time to commit one group of batches (one transaction, one COPY)")
                         .Register(registry)
                         .Add({}, Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                              1, 2.5, 5});
  queued_ = &BuildGauge()
                 .Name("spillway_ingest_queued_batches")
                 .Help("Sample batches received and waiting to be committed")
                 .Register(registry)
                 .Add({});
  lag_ = &BuildGauge()
              .Name("spillway_ingest_lag_seconds")
              .Help("Now minus the oldest ingest watermark of the hosts in service (set by the leader)")
              .Register(registry)
              .Add({});
  rollup_lag_ = &BuildGauge()
                     .Name("spillway_rollup_lag_seconds")
                     .Help("Now minus the oldest sample change not yet folded into the hourly rollups (set by the leader)")
                     .Register(registry)
                     .Add({});
  coverage_ = &BuildGauge()
                   .Name("spillway_metering_coverage_ratio")
                   .Help("Metered GPU-time over the GPU-time instances ran by their lifecycle, last 24 h, up to what "
                         "is folded (1 when nothing ran; set by the leader)")
                   .Register(registry)
                   .Add({});
  skew_ = std::make_shared<LabeledGauge>(
      "spillway_host_clock_skew_seconds",
      "A host's clock minus the server's, from its last sample batch (sent_at_ms against the moment the request "
      "arrived)",
      "host_id");
}

Ingestor::~Ingestor() { Stop(); }

void Ingestor::Start() {
  std::lock_guard lk(mu_);
  if (!threads_.empty()) return;
  stopping_ = false;
  for (int i = 0; i < std::max(1, settings_.committers); ++i) threads_.emplace_back([this] { Loop(); });
}

void Ingestor::Stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  std::deque<Pending> left;
  {
    std::lock_guard lk(mu_);
    left.swap(queue_);
  }
  for (auto& p : left) p.done({IngestResult::Kind::kUnavailable, 0, std::nullopt, "the server is stopping"});
}

bool Ingestor::Submit(std::string host_id, protocol::SampleBatch batch, Done done, std::optional<TimeMs> arrived) {
  {
    std::lock_guard lk(mu_);
    if (stopping_ || threads_.empty() || queue_.size() >= settings_.max_queued_batches) {
      refused_->Increment();
      return false;
    }
    queue_.push_back({std::move(host_id), std::move(batch), std::move(done), arrived.value_or(clock_.Now()), std::nullopt});
    queued_->Set(static_cast<double>(queue_.size()));
  }
  cv_.notify_one();
  return true;
}

IngestResult Ingestor::SubmitAndWait(std::string host_id, protocol::SampleBatch batch, std::optional<TimeMs> arrived) {
  auto promise = std::make_shared<std::promise<IngestResult>>();
  auto future = promise->get_future();
  if (!Submit(std::move(host_id), std::move(batch), [promise](IngestResult r) { promise->set_value(std::move(r)); },
              arrived))
    return {IngestResult::Kind::kUnavailable, 0, std::nullopt, "the ingest queue is full"};
  return future.get();
}

void Ingestor::Loop() {
  Committer committer;
  for (;;) {
    std::vector<Pending> group;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      std::size_t samples = 0;
      while (!queue_.empty() && (group.empty() || samples + queue_.front().batch.samples.size() <= settings_.group_max_samples)) {
        samples += queue_.front().batch.samples.size();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      queued_->Set(static_cast<double>(queue_.size()));
    }
    CommitGroup(committer, group);
    for (auto& p : group) {
      IngestResult r = std::move(*p.result);
      switch (r.kind) {
        case IngestResult::Kind::kAccepted: accepted_->Increment(); break;
        case IngestResult::Kind::kDuplicate: duplicate_->Increment(); break;
        case IngestResult::Kind::kRejected: rejected_->Increment(); break;
        case IngestResult::Kind::kUnavailable: refused_->Increment(); break;
      }
      p.done(std::move(r));
    }
  }
}

void Ingestor::CommitGroup(Committer& c, std::vector<Pending>& group) {
  // A lost race on a ledger row (another replica committed the same batch meanwhile) or a broken
  // connection: try the group again; the ledger check then sees what did commit.
  constexpr int kAttempts = 3;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    for (auto& p : group) p.result.reset();
    try {
      if (!c.conn || !c.conn->is_open()) c.conn = OpenSession(session_);
      if (TryCommit(c, group)) return;
    } catch (const pqxx::unique_violation& e) {
      log::Info("sample batch committed elsewhere meanwhile: checking the ledger again", {{"error", e.what()}});
    } catch (const std::exception& e) {
      log::Warn("sample batches not committed", {{"attempt", attempt}, {"error", e.what()}});
      if (!c.conn || !c.conn->is_open() || IsUnavailable(e)) c.conn.reset();
      if (attempt < kAttempts) std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
    }
  }
  for (auto& p : group)
    p.result = IngestResult{IngestResult::Kind::kUnavailable, 0, std::nullopt,
                            "the samples could not be stored now; send the batch again"};
}

bool Ingestor::TryCommit(Committer& c, std::vector<Pending>& group) {
  const auto started = std::chrono::steady_clock::now();
  const TimeMs now = clock_.Now();
  pqxx::work tx(*c.conn, "ingest");
  std::vector<HostSeq> keys;
  std::vector<std::string> hosts, instances;
  for (const auto& p : group) {
    keys.emplace_back(p.host_id, p.batch.batch_seq);
    hosts.push_back(p.host_id);
    for (const auto& s : p.batch.samples)
      if (s.instance_id) instances.push_back(*s.instance_id);
  }
  std::sort(hosts.begin(), hosts.end());
  hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
  std::sort(instances.begin(), instances.end());
  instances.erase(std::unique(instances.begin(), instances.end()), instances.end());

  // First, the GPUs this group writes to, locked until commit: nobody else stores their time
  // meanwhile, and what a committer that held them before us stored (its ledger rows too) is
  // visible to every statement from here on, so a replay racing its first copy is a duplicate.
  std::set<GpuKey> touched;
  for (const auto& p : group)
    for (const auto& s : p.batch.samples) touched.insert({p.host_id, s.gpu_index});
  auto marks = LockGpuMarks(tx, touched);
  std::set<HostSeq> done = CommittedBatches(tx, keys);
  const auto gpus = HostGpuIndices(tx, hosts);
  const HeldGpus allocations = AllocationsOf(tx, hosts, instances);
  // Open holds end, for attribution, at the database's now: the clock that stamps the holds.
  const TimeMs held_until = allocations.database_now.value_or(now);
  // Each instance's holds of each GPU, as attribution cuts samples at them.
  std::map<std::tuple<std::string, std::string, int>, std::vector<Hold>> holds;
  for (const auto& a : allocations.spans) holds[{a.instance_id, a.host_id, a.gpu_index}].push_back({a.from, a.to});
  // Time stored earlier in this group, per GPU: [begins, ends) in ms.
  std::map<GpuKey, std::vector<std::pair<std::int64_t, std::int64_t>>> stored_here;
  const Millis longest = 3 * settings_.rules.sample_interval;

  SampleRows rows(NextTick(tx));
  {
    std::size_t n = 0;
    for (const auto& p : group) n += p.batch.samples.size();
    rows.Reserve(n);
  }
  std::vector<LedgerRow> ledger;
  std::set<std::int64_t> days;
  std::optional<TimeMs> first_ts, last_ts;
  std::int64_t samples = 0, unowned_ms = 0;
  for (auto& p : group) {
    const HostSeq key{p.host_id, p.batch.batch_seq};
    if (done.count(key)) {  // in the ledger, or earlier in this group
      p.result = IngestResult{IngestResult::Kind::kDuplicate, 0, std::nullopt, ""};
      continue;
    }
    // A sample that begins before its GPU's mark may cover time already stored: checked against
    // what this group stored and what is in the table.
    std::set<std::size_t> overlapping;
    std::vector<OverlapProbe> probes;
    for (std::size_t i = 0; i < p.batch.samples.size(); ++i) {
      const auto& s = p.batch.samples[i];
      const auto mark = marks.find({p.host_id, s.gpu_index});
      const TimeMs begins = s.ts_ms - Millis(s.interval_ms);
      if (mark == marks.end() || !mark->second || begins >= *mark->second) continue;
      const auto& here = stored_here[mark->first];
      const bool clash = std::any_of(here.begin(), here.end(), [&](const auto& iv) {
        return iv.first < EpochMs(s.ts_ms) && EpochMs(begins) < iv.second;
      });
      if (clash) overlapping.insert(i);
      else probes.push_back({i, s.gpu_index, begins, s.ts_ms});
    }
    for (const std::size_t i : OverlapsStored(tx, p.host_id, probes, longest)) overlapping.insert(i);
    if (auto problem = CheckBatch(p.batch, p.host_id, gpus, allocations.spans, now, settings_.rules, overlapping)) {
      p.result = std::move(*problem);
      continue;
    }
    done.insert(key);
    for (const auto& s : p.batch.samples) {
      const GpuKey gpu{p.host_id, s.gpu_index};
      stored_here[gpu].emplace_back(EpochMs(s.ts_ms) - s.interval_ms, EpochMs(s.ts_ms));
      auto& mark = marks[gpu];
      if (!mark || s.ts_ms > *mark) mark = s.ts_ms;
      const std::vector<Hold>* held = nullptr;
      if (s.instance_id) {
        const auto it = holds.find({*s.instance_id, p.host_id, s.gpu_index});
        static const std::vector<Hold> kNone;
        held = it == holds.end() ? &kNone : &it->second;
      }
      for (const SamplePiece& piece : CutSample(s.ts_ms, s.interval_ms, s.energy_mj, held, held_until)) {
        days.insert(EpochMs(piece.ts) / kDayMs);
        if (!first_ts || piece.ts < *first_ts) first_ts = piece.ts;
        if (!last_ts || piece.ts > *last_ts) last_ts = piece.ts;
        if (s.instance_id && !piece.attributed) unowned_ms += piece.interval_ms;
        rows.Add(piece.ts, p.host_id, s.gpu_index, piece.attributed ? s.instance_id : std::nullopt, piece.interval_ms,
                 s.util_pct, s.mem_used_bytes, s.power_mw, piece.energy_mj);
      }
    }
    std::optional<std::int64_t> skew;
    if (p.batch.sent_at_ms) skew = (*p.batch.sent_at_ms - p.received).count();
    ledger.push_back({p.host_id, p.batch.batch_seq, static_cast<std::int64_t>(p.batch.samples.size()),
                      p.batch.sampled_through_ms, skew});
    samples += static_cast<std::int64_t>(p.batch.samples.size());
    p.result = IngestResult{IngestResult::Kind::kAccepted, static_cast<std::int64_t>(p.batch.samples.size()),
                            std::nullopt, ""};
  }
  if (ledger.empty()) {
    tx.abort();
    return true;
  }
  for (std::int64_t day : days)
    if (!c.partitions.count(day)) EnsureDayPartition(tx, FromEpochMs(day * kDayMs));
  CopySamples(tx, rows);
  // With its samples: the fold takes the tick, and its samples, once this commits.
  if (first_ts) RecordTick(tx, rows.tick(), *first_ts, *last_ts);
  AdvanceGpuMarks(tx, marks);
  RecordBatches(tx, ledger, now);
  tx.commit();
  c.partitions.insert(days.begin(), days.end());
  samples_total_->Increment(static_cast<double>(samples));
  unowned_seconds_->Increment(static_cast<double>(unowned_ms) / 1000.0);
  commit_seconds_->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  for (const auto& row : ledger)
    if (row.clock_skew_ms) NoteSkew(row.host_id, *row.clock_skew_ms);
  return true;
}

void Ingestor::NoteSkew(const std::string& host_id, std::int64_t skew_ms) {
  skew_->Set(host_id, static_cast<double>(skew_ms) / 1000.0);
  std::lock_guard lk(skew_mu_);
  const bool off = std::llabs(skew_ms) > settings_.rules.skew_tolerance.count();
  if (off && skewed_hosts_.insert(host_id).second)
    log::Warn("host clock is off from the server's beyond metering.clock_skew_tolerance: its samples near now are "
              "refused until it is fixed",
              {{"host_id", host_id}, {"skew_ms", skew_ms}, {"tolerance_ms", settings_.rules.skew_tolerance.count()}});
  else if (!off && skewed_hosts_.erase(host_id))
    log::Info("host clock back within tolerance", {{"host_id", host_id}, {"skew_ms", skew_ms}});
}

void Ingestor::CreatePartitionsAhead(pqxx::connection& conn, TimeMs now) const {
  pqxx::work tx(conn, "metering_partitions");
  for (int d = 0; d <= settings_.partitions_ahead; ++d) EnsureDayPartition(tx, now + Millis(d * kDayMs));
  tx.commit();
}

std::int64_t Ingestor::PruneLedger(pqxx::connection& conn, TimeMs now) const {
  const TimeMs before = now - settings_.rules.max_sample_age - settings_.rules.skew_tolerance - Millis(3'600'000);
  std::int64_t total = 0;
  for (;;) {  // in chunks, so that no transaction holds many rows
    const std::int64_t n = InTransaction(conn, [&](Tx& tx) { return metering::PruneLedger(tx, before, 10'000); });
    total += n;
    if (n < 10'000) return total;
  }
}

std::int64_t Ingestor::CheckAttribution(pqxx::connection& conn, TimeMs now) {
  // Samples older than the age limit are refused, so only instances with usage since then can change.
  const TimeMs since = now - settings_.rules.max_sample_age - settings_.rules.skew_tolerance - Millis(kDayMs);
  std::vector<Overattribution> found;
  {
    pqxx::read_transaction tx(conn, "metering_attribution_check");
    found = OverattributedInstances(tx, since);
  }
  std::int64_t excess = 0;
  for (const auto& o : found) {
    excess += o.excess_ms();
    auto& seen = overattributed_seen_[o.instance_id];
    if (o.excess_ms() <= seen) continue;
    overattributed_seconds_->Increment(static_cast<double>(o.excess_ms() - seen) / 1000.0);
    seen = o.excess_ms();
    log::Error("an instance is attributed more GPU time than it held: metering must be looked at before it is billed",
               {{"instance_id", o.instance_id}, {"attributed_gpu_ms", o.attributed_ms}, {"held_gpu_ms", o.held_ms}});
  }
  return excess;
}

void Ingestor::RefreshGauges(pqxx::connection& conn, TimeMs now) {
  pqxx::read_transaction tx(conn, "metering_gauges");
  const auto marks = ActiveWatermarks(tx);
  lag_->Set(marks.empty() ? 0.0 : std::chrono::duration<double>(now - marks.front().sampled_through).count());
  const RollupHealth health = ReadRollupHealth(tx, now);
  rollup_lag_->Set(health.lag_seconds);
  coverage_->Set(health.coverage.value_or(1.0));
}

}  // namespace spillway::metering
