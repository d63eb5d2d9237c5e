#include "provisioning/heartbeats.hpp"

#include <boost/json.hpp>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>

#include "core/errors.hpp"
#include "core/long_lived.hpp"
#include "core/sql.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/words.hpp"

namespace spillway {
namespace {

constexpr auto kFoldCapacityEvery = std::chrono::seconds(5);

// Hosts first, locked in id order (the lock order), then their instances.
const Statement kLockHosts{"heartbeat_lock_hosts",
                           "SELECT id FROM hosts WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"};
const Statement kFlushHosts{"heartbeat_flush_hosts", R"sql(
UPDATE hosts h SET last_heartbeat = v.at, health = 'up', down_since = NULL, down_reason = NULL,
       agent_version = COALESCE(NULLIF(v.agent_version, ''), h.agent_version)
FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS v(id, at, agent_version)
WHERE h.id = v.id AND h.last_heartbeat < v.at)sql"};
const Statement kFlushInstances{"heartbeat_flush_instances", R"sql(
UPDATE instances i SET last_reported_at = v.at
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS v(id, host_id, at)
WHERE i.id = v.id AND i.host_id = v.host_id AND )sql" SPW_ON_HOST("i.state") R"sql(
  AND (i.last_reported_at IS NULL OR i.last_reported_at < v.at))sql"};
const Statement kWriterFlushed{"heartbeat_writer_flushed", R"sql(
INSERT INTO heartbeat_writers (replica_id, flushed_at, started_at, refused_at)
VALUES ($1, $2::timestamptz, $2::timestamptz, $3::timestamptz)
ON CONFLICT (replica_id) DO UPDATE SET flushed_at = EXCLUDED.flushed_at, refused_at = EXCLUDED.refused_at)sql"};
const Statement kWriterGone{"heartbeat_writer_gone", "DELETE FROM heartbeat_writers WHERE replica_id = $1"};
const Statement kWritersLagging{"heartbeat_writers_lagging", R"sql(
SELECT count(*) AS lagging FROM heartbeat_writers
WHERE (flushed_at < $1::timestamptz OR refused_at >= $1::timestamptz) AND flushed_at >= $2::timestamptz)sql"};
const Statement kWritersDead{"heartbeat_writers_dead", "DELETE FROM heartbeat_writers WHERE flushed_at < $1::timestamptz"};

// A report's instances as one string, each field prefixed by its length, so that two lists encode
// alike exactly when they are equal.
template <typename String>
void EncodeInstances(const std::vector<ReportedInstance>& instances, String& out) {
  out.clear();
  for (const auto& r : instances)
    for (const std::string* field : {&r.id, &r.state}) {
      out += std::to_string(field->size());
      out += ':';
      out += *field;
    }
}

}  // namespace

HeartbeatRecorder::HeartbeatRecorder(SessionOptions session, Millis flush_interval, const Clock& clock,
                                     prometheus::Registry& registry)
    : session_(std::move(session)),
      flush_interval_(flush_interval),
      clock_(clock),
      replica_id_(NewId("rep")),
      known_(&LongLivedMemory()) {
  using namespace prometheus;
  auto& heartbeats = BuildCounter()
                         .Name("spillway_heartbeats_recorded_total")
                         .Help("Heartbeats that repeated the host's last report, recorded in memory and written in "
                               "batches (the rest are processed in full, one transaction each)")
                         .Register(registry);
  fast_ = &heartbeats.Add({});
  flush_failures_ = &BuildCounter()
                         .Name("spillway_heartbeat_flush_failures_total")
                         .Help("Batches of heartbeats that could not be written yet (kept and retried)")
                         .Register(registry)
                         .Add({});
  pending_gauge_ = &BuildGauge()
                        .Name("spillway_heartbeats_pending")
                        .Help("Hosts whose latest heartbeat is received but not yet written")
                        .Register(registry)
                        .Add({});
}

HeartbeatRecorder::~HeartbeatRecorder() { Stop(); }

void HeartbeatRecorder::Start() { thread_ = std::thread([this] { Loop(); }); }

void HeartbeatRecorder::Stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::uint64_t HeartbeatRecorder::Generation() const {
  std::lock_guard lk(mu_);
  return generation_;
}

bool HeartbeatRecorder::TryRecord(const std::string& host, const HeartbeatReport& report, TimeMs now,
                                  std::int64_t* version) {
  std::string instances;
  EncodeInstances(report.instances, instances);
  std::lock_guard lk(mu_);
  if (!listening_ || stopping_) return false;
  const auto it = known_.find(std::string_view(host));
  if (it == known_.end() || std::string_view(it->second.instances) != instances) return false;
  Pending& p = pending_[host];
  p.at = std::max(p.at, now);
  p.agent_version = report.agent_version;
  p.live.clear();
  for (const auto& r : report.instances)
    if (r.state == "starting" || r.state == "running") p.live.push_back(r.id);
  *version = it->second.version;
  fast_->Increment();
  pending_gauge_->Set(static_cast<double>(pending_.size()));
  return true;
}

void HeartbeatRecorder::RecordAlive(const std::string& host, TimeMs now) {
  std::lock_guard lk(mu_);
  Pending& p = pending_[host];
  p.at = std::max(p.at, now);
  pending_gauge_->Set(static_cast<double>(pending_.size()));
}

void HeartbeatRecorder::Refused(TimeMs now) { refused_at_ms_ = EpochMs(now); }

void HeartbeatRecorder::Processed(std::uint64_t generation, const std::string& host, const HeartbeatReport& report,
                                  std::int64_t version) {
  Known known{std::pmr::string(known_.get_allocator().resource()), version};
  EncodeInstances(report.instances, known.instances);
  std::lock_guard lk(mu_);
  if (generation != generation_ || !listening_) return;  // something changed meanwhile: not safe to repeat
  PutKept(known_, host, std::move(known));
}

void HeartbeatRecorder::Invalidate(const std::vector<std::string>& hosts, bool all, bool listening) {
  std::lock_guard lk(mu_);
  ++generation_;
  listening_ = listening;
  if (all || !listening) {
    known_.clear();
    return;
  }
  for (const auto& h : hosts) EraseKept(known_, h);
}

bool HeartbeatRecorder::Flush(std::map<std::string, Pending>& batch) {
  try {
    if (!conn_) conn_ = OpenSession(session_);
    std::vector<std::string> hosts, ats, versions, inst_ids, inst_hosts, inst_ats;
    for (const auto& [host, p] : batch) {
      hosts.push_back(host);
      ats.push_back(FormatTime(p.at));
      versions.push_back(p.agent_version);
      for (const auto& id : p.live) {
        inst_ids.push_back(id);
        inst_hosts.push_back(host);
        inst_ats.push_back(FormatTime(p.at));
      }
    }
    const TimeMs now = clock_.Now();
    InTransaction(*conn_, [&](pqxx::work& tx) {
      if (!hosts.empty()) {
        tx.exec_prepared(kLockHosts.name, TextArrayLiteral(hosts));
        tx.exec_prepared(kFlushHosts.name, TextArrayLiteral(hosts), TextArrayLiteral(ats), TextArrayLiteral(versions));
        if (!inst_ids.empty())
          tx.exec_prepared(kFlushInstances.name, TextArrayLiteral(inst_ids), TextArrayLiteral(inst_hosts), TextArrayLiteral(inst_ats));
      }
      const std::int64_t refused = refused_at_ms_.load();
      tx.exec_prepared(kWriterFlushed.name, replica_id_, FormatTime(now),
                       refused ? std::optional<std::string>(FormatTime(FromEpochMs(refused))) : std::nullopt);
    });
    return true;
  } catch (const std::exception& e) {
    conn_.reset();
    flush_failures_->Increment();
    log::Warn("heartbeats: cannot write this batch yet; kept for the next",
              {{"hosts", static_cast<std::int64_t>(batch.size())}, {"error", e.what()}});
    return false;
  }
}

void HeartbeatRecorder::Loop() {
  auto folded = std::chrono::steady_clock::now();
  for (;;) {
    std::map<std::string, Pending> batch;
    bool stopping;
    {
      std::unique_lock lk(mu_);
      cv_.wait_for(lk, flush_interval_, [&] { return stopping_; });
      stopping = stopping_;
      batch.swap(pending_);
    }
    if (!Flush(batch)) {
      std::lock_guard lk(mu_);
      for (auto& [host, p] : batch) {  // keep them, newer news first
        auto [it, inserted] = pending_.try_emplace(host, std::move(p));
        (void)inserted;
        (void)it;
      }
      pending_gauge_->Set(static_cast<double>(pending_.size()));
    } else {
      std::lock_guard lk(mu_);
      pending_gauge_->Set(static_cast<double>(pending_.size()));
    }
    if (stopping) break;
    // Pool capacity changes are folded by whoever gets there: with no leader running they would
    // pile up, and every launch reads them.
    if (std::chrono::steady_clock::now() - folded >= kFoldCapacityEvery) {
      folded = std::chrono::steady_clock::now();
      try {
        if (!conn_) conn_ = OpenSession(session_);
        FoldPoolCapacity(*conn_);
      } catch (const std::exception& e) {
        log::Warn("pool capacity changes not folded; the next try is in a few seconds", {{"error", e.what()}});
        conn_.reset();
      }
    }
  }
  try {
    if (!conn_) conn_ = OpenSession(session_);
    pqxx::nontransaction(*conn_).exec_prepared(kWriterGone.name, replica_id_);
  } catch (const std::exception&) {
  }
  conn_.reset();
}

bool HeartbeatWritersLagging(pqxx::connection& conn, TimeMs now, Millis lag_limit, Millis dead_after) {
  pqxx::nontransaction tx(conn);
  tx.exec_prepared(kWritersDead.name, FormatTime(now - dead_after));
  return tx.exec_prepared(kWritersLagging.name, FormatTime(now - lag_limit), FormatTime(now - dead_after))[0]["lagging"]
             .as<std::int64_t>() > 0;
}

}  // namespace spillway
