#pragma once
// Ingest of agents' sample batches (POST /v1/agent/samples): exactly once, group-committed.
//
// Batches are parsed where they arrive and queued here; a committer thread (metering.committers
// of them, so one group is prepared while another commits) takes whatever is queued (up to
// group_max_samples) and, in one transaction on a connection of its own, drops the
// batches already in the ledger, checks every other sample (CheckBatch), writes all accepted
// samples with one COPY, adds each batch's ledger row and moves each host's watermark, commits,
// and only then answers each batch. A crash before the commit loses nothing the agent was told
// is stored (it keeps the batch and sends it again); a replay after it finds the ledger row.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db.hpp"
#include "core/duration.hpp"
#include "core/metrics.hpp"
#include "metering/samples_store.hpp"
#include "protocol/agent.hpp"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace spillway::metering {

struct IngestRules {
  Millis sample_interval{10000};     // agent.sample_interval: a sample covers at most 3 of them
  Millis skew_tolerance{5000};       // metering.clock_skew_tolerance
  Millis max_sample_age{168LL * 3600 * 1000};
};

struct IngestResult {
  enum class Kind { kAccepted, kDuplicate, kRejected, kUnavailable };
  Kind kind = Kind::kUnavailable;
  std::int64_t accepted = 0;
  std::optional<std::size_t> sample_index;  // kRejected: the sample at fault, when one is
  std::string message;                      // kRejected / kUnavailable: why
  // kRejected, when the batch's only fault is samples naming an instance that did not hold their GPU
  // then (a host cut off from the control plane while its instances were failed): all of them, so
  // the agent can send the batch again with those samples unattributed.
  std::vector<std::size_t> unheld{};
  // kRejected, likewise: samples covering GPU time already stored (sent before under another
  // batch_seq): the agent sends the batch again without them.
  std::vector<std::size_t> overlapping{};
};

struct IngestSettings {
  IngestRules rules;
  std::size_t max_queued_batches = 512;
  std::size_t group_max_samples = 50000;
  int committers = 2;  // groups in flight at once, each on a connection of its own
  int partitions_ahead = 3;
  Millis rollup_interval{30000};
  Millis retention{90LL * 24 * 3600 * 1000};  // metering.retention
  Millis retry_after{1000};
  static IngestSettings From(const Config& config);
};

// The first problem with `batch` from host `host_id` at server time `now` (a kRejected result,
// with the sample's index when one sample is at fault), or nullopt when every
// sample is acceptable: its GPU is one of the host's (`gpus`), it covers at most 3 sample
// intervals, it is not from the future (beyond the tolerance) nor older than max_sample_age, no two
// samples of one GPU overlap, and a sample with an instance lies within that instance's
// allocation of that GPU on this host (`allocations`, widened by the tolerance at both ends), and
// none covers GPU time already stored (`overlapping`: the indexes of those that do). Samples of an
// instance outside its allocation and samples overlapping stored time are the repairable faults:
// when they are all that is wrong, every one of them is listed (unheld, overlapping).
std::optional<IngestResult> CheckBatch(const protocol::SampleBatch& batch, const std::string& host_id,
                                       const std::set<std::pair<std::string, int>>& gpus,
                                       const std::vector<AllocationSpan>& allocations, TimeMs now,
                                       const IngestRules& rules, const std::set<std::size_t>& overlapping = {});

class Ingestor {
 public:
  Ingestor(SessionOptions session, IngestSettings settings, const Clock& clock, prometheus::Registry& registry);
  ~Ingestor();
  void Start();
  void Stop();  // answers what is queued as unavailable (the agents send it again)

  using Done = std::function<void(IngestResult)>;
  // Queues `batch` of `host_id`; `done` is called once, from the committer thread. False (and
  // `done` not called) when the queue is full: answer 503 with Retry-After. `arrived`: when the
  // request reached the server (its first byte read), which the host's clock skew is measured
  // against, so that time spent queued here is not taken for skew; now when not known.
  bool Submit(std::string host_id, protocol::SampleBatch batch, Done done, std::optional<TimeMs> arrived = {});
  // Submit, then wait for the answer (for callers on a worker thread). kUnavailable when full.
  IngestResult SubmitAndWait(std::string host_id, protocol::SampleBatch batch, std::optional<TimeMs> arrived = {});

  Millis retry_after() const { return settings_.retry_after; }
  // spillway_host_clock_skew_seconds{host_id}, for Metrics::Add (one series a host: not in the registry).
  std::weak_ptr<const LabeledGauge> clock_skew() const { return skew_; }
  // Partitions for today and partitions_ahead days (the metering step calls it on the leader).
  void CreatePartitionsAhead(pqxx::connection& conn, TimeMs now) const;
  // Forgets ledger rows older than max_sample_age (plus the tolerance and an hour): a replay of
  // such a batch holds only samples older than that, which are refused (422), never stored again.
  // Returns rows deleted.
  std::int64_t PruneLedger(pqxx::connection& conn, TimeMs now) const;
  // spillway_ingest_lag_seconds, spillway_rollup_lag_seconds and spillway_metering_coverage_ratio
  // (the leader's step).
  void RefreshGauges(pqxx::connection& conn, TimeMs now);
  // The invariant (the leader's metering_attribution_check step): no instance is attributed more
  // GPU time than it held. Counts what any instance has beyond its holds in
  // spillway_metering_overattributed_gpu_seconds_total (which must stay 0) and logs each; returns the
  // excess found now, in GPU-ms.
  std::int64_t CheckAttribution(pqxx::connection& conn, TimeMs now);

 private:
  struct Pending {
    std::string host_id;
    protocol::SampleBatch batch;
    Done done;
    TimeMs received{};
    std::optional<IngestResult> result;
  };
  // Each committer's own connection and what it knows exists.
  struct Committer {
    std::unique_ptr<pqxx::connection> conn;
    std::set<std::int64_t> partitions;  // UTC days (epoch days) known to exist
  };
  void Loop();
  void CommitGroup(Committer& c, std::vector<Pending>& group);
  bool TryCommit(Committer& c, std::vector<Pending>& group);  // false: retry the group

  SessionOptions session_;
  IngestSettings settings_;
  const Clock& clock_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;

  prometheus::Counter* samples_total_ = nullptr;
  prometheus::Family<prometheus::Counter>* batches_ = nullptr;
  prometheus::Counter *accepted_ = nullptr, *duplicate_ = nullptr, *rejected_ = nullptr, *refused_ = nullptr;
  prometheus::Counter* unowned_seconds_ = nullptr;         // GPU time named by samples but outside its instance's hold
  prometheus::Counter* overattributed_seconds_ = nullptr;  // the invariant's breaches (must stay 0)
  std::map<std::string, std::int64_t> overattributed_seen_;  // per instance, already counted
  prometheus::Histogram* commit_seconds_ = nullptr;
  prometheus::Gauge* queued_ = nullptr;
  prometheus::Gauge* lag_ = nullptr;
  prometheus::Gauge* rollup_lag_ = nullptr;
  prometheus::Gauge* coverage_ = nullptr;
  std::shared_ptr<LabeledGauge> skew_;  // spillway_host_clock_skew_seconds{host_id}
  std::mutex skew_mu_;
  std::set<std::string> skewed_hosts_;  // beyond the tolerance at their last batch (logged once)
  void NoteSkew(const std::string& host_id, std::int64_t skew_ms);
};

}  // namespace spillway::metering
