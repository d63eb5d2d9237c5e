#pragma once
// Heartbeats that change nothing cost no database round trip: each replica remembers, per host,
// the last report it processed in full, and a heartbeat repeating it while nothing else changed is
// recorded in memory and written with others in one batch (every flush interval, on a connection
// of its own). So heartbeats neither need nor wait for the request pool, and an overloaded pool is
// not an outage of the hosts. A report that differs, or one after the host's assignments changed
// (the notifier says so) or while this replica is not listening for such changes, takes the full
// path (RecordHeartbeat in a transaction).
//
// The leader must not judge silence on heartbeats that were received but not yet written: each
// writer says in heartbeat_writers when it last flushed, and HeartbeatWritersLagging tells the
// silence step to wait while a live writer lags.
#include <boost/json/value.hpp>
#include <pqxx/pqxx>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory_resource>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "provisioning/fleet.hpp"
#include "core/db.hpp"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
}  // namespace prometheus

namespace spillway {

// POST /v1/agent/heartbeat's body (protocol/agent.hpp parses it).
using HeartbeatReport = protocol::Heartbeat;

class HeartbeatRecorder {
 public:
  HeartbeatRecorder(SessionOptions session, Millis flush_interval, const Clock& clock, prometheus::Registry& registry);
  ~HeartbeatRecorder();
  void Start();
  void Stop();  // flushes what is pending, removes this replica's writer row

  // The fast path: when `report` is what this replica last processed in full for `host` and
  // nothing invalidated that since, records the heartbeat for the next flush, sets *version and
  // returns true. Otherwise false: process it in full, then call Processed.
  bool TryRecord(const std::string& host, const HeartbeatReport& report, TimeMs now, std::int64_t* version);
  // A heartbeat from `host` (its token verified) that could not be processed now (the request pool
  // was full): the host is alive, whatever it reported; the report itself comes again.
  void RecordAlive(const std::string& host, TimeMs now);
  // A heartbeat refused before its host could be told (the pool was full and the token not in
  // the cache): the leader holds off judging anyone for a while (HeartbeatWritersLagging).
  void Refused(TimeMs now);
  // Take before the full path; pass to Processed so an invalidation that raced it wins.
  std::uint64_t Generation() const;
  void Processed(std::uint64_t generation, const std::string& host, const HeartbeatReport& report,
                 std::int64_t version);
  // The notifier: these hosts' assignments changed (all: any may have), or it stopped or started
  // listening. The fast path is open only while listening.
  void Invalidate(const std::vector<std::string>& hosts, bool all, bool listening);

 private:
  // What a host last reported, as processed in full: kept in LongLivedMemory (core/long_lived.hpp),
  // like every per-host cache.
  struct Known {
    std::pmr::string instances;  // the report's instances, encoded (EncodeInstances)
    std::int64_t version = 0;
  };
  struct Pending {
    TimeMs at;
    std::string agent_version;
    std::vector<std::string> live;  // instances it reported starting or running
  };
  void Loop();
  bool Flush(std::map<std::string, Pending>& batch);

  SessionOptions session_;
  Millis flush_interval_;
  const Clock& clock_;
  const std::string replica_id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false, listening_ = false;
  std::uint64_t generation_ = 0;
  std::atomic<std::int64_t> refused_at_ms_{0};
  std::pmr::map<std::pmr::string, Known, std::less<>> known_;
  std::map<std::string, Pending> pending_;
  std::thread thread_;
  std::unique_ptr<pqxx::connection> conn_;  // the flusher's own session
  prometheus::Counter* fast_;
  prometheus::Counter* flush_failures_;
  prometheus::Gauge* pending_gauge_;
};

// True when a replica that wrote within dead_after has not flushed for lag_limit, or refused a
// heartbeat it could not attribute within lag_limit: the fleet's latest heartbeats are not all in
// the database. Rows older than dead_after (a replica that died) are removed.
bool HeartbeatWritersLagging(pqxx::connection& conn, TimeMs now, Millis lag_limit, Millis dead_after);

}  // namespace spillway
