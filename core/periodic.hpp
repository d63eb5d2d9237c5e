#pragma once
// Background work as a list of named periodic steps that each module registers and that only the
// leader runs: the replica whose dedicated session holds a PostgreSQL advisory lock. When that
// replica dies its session ends, the lock is released, and another takes over within a tick.
#include <pqxx/pqxx>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "core/db.hpp"

namespace prometheus {
class Registry;
class Gauge;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace spillway {

struct StepContext {
  TimeMs now;
  // Since when this leader has led with the database reachable and its loop running on time: the
  // time in which the control plane could hear the fleet. Rules that judge silence count from here.
  TimeMs listening_since;
};

struct PeriodicStep {
  std::string name;  // the `step` label of its metrics
  Millis interval;   // runs at most this often (at the leader's tick granularity)
  std::function<void(pqxx::connection&, const StepContext&)> run;
};

struct LeaderOptions {
  SessionOptions session;      // application_name "spillway-leader"
  std::int64_t lock_key = 0;   // the advisory lock whose holder leads
  Millis tick{1000};           // how often the leader looks for due steps
  Millis stall_limit{15000};   // a gap between ticks longer than this restarts listening_since
  // The gauge that says whether this replica leads this loop (1 or 0): another loop (webhook
  // deliveries) has a lock and a gauge of its own.
  std::string leader_metric = "spillway_controller_leader";
};

class PeriodicSteps {
 public:
  PeriodicSteps(LeaderOptions options, const Clock& clock, prometheus::Registry& registry);
  ~PeriodicSteps();
  PeriodicSteps(const PeriodicSteps&) = delete;
  PeriodicSteps& operator=(const PeriodicSteps&) = delete;

  void Add(PeriodicStep step);  // before Start
  void Start();
  void Stop();

 private:
  void Loop();
  LeaderOptions options_;
  const Clock& clock_;
  std::vector<PeriodicStep> steps_;
  prometheus::Gauge* leader_;
  prometheus::Family<prometheus::Histogram>* seconds_;
  prometheus::Family<prometheus::Counter>* failures_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
  std::mutex join_mu_;  // Stop may be called from two threads (a drain hook and the end of main)
};

}  // namespace spillway
