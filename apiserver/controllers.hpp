#pragma once
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/config.hpp"

namespace spillway {

struct FleetMetrics;

// The background controllers (pending placements, heartbeat timeouts, unreported instances,
// preemption deadlines, the spot pricer, gauges). They run in exactly one replica: the one whose
// dedicated connection holds a PostgreSQL advisory lock. When that replica dies its session ends,
// the lock is released, and another replica takes over within a tick.
class Controllers {
 public:
  Controllers(const Config& config, FleetMetrics& metrics);
  ~Controllers();
  void Start();
  void Stop();

 private:
  void Loop();
  const Config& config_;
  FleetMetrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace spillway
