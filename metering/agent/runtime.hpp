#pragma once
// How an agent runs the instances assigned to its host. `simulated` stands in for real workloads
// in demos and tests; `exec` runs an operator-configured launcher command per instance.
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace spillway::agent {

struct InstanceSpec {
  std::string id;
  std::vector<int> gpu_indices;
};

class Runtime {
 public:
  virtual ~Runtime() = default;
  virtual void Start(const InstanceSpec& spec) = 0;  // no-op when already known
  virtual void Stop(const std::string& id) = 0;      // no-op when stopped or unknown
  // "starting", "running", "stopped" or "failed"; "" when unknown.
  virtual std::string State(const std::string& id) = 0;
  virtual void Forget(const std::string& id) = 0;    // stops it if needed and drops it
  virtual void Poll() {}                             // periodic housekeeping (reaping, escalation)
};
using RuntimePtr = std::unique_ptr<Runtime>;

// Instances "boot" for boot_delay, then run until stopped.
class SimulatedRuntime : public Runtime {
 public:
  explicit SimulatedRuntime(std::chrono::milliseconds boot_delay) : boot_delay_(boot_delay) {}
  void Start(const InstanceSpec& spec) override;
  void Stop(const std::string& id) override;
  std::string State(const std::string& id) override;
  void Forget(const std::string& id) override;

 private:
  struct Entry {
    std::chrono::steady_clock::time_point started;
    bool stopped = false;
  };
  std::chrono::milliseconds boot_delay_;
  std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

// Runs `/bin/sh -c LAUNCHER` per instance, in its own process group, with CUDA_VISIBLE_DEVICES set
// to the instance's GPU indices and SPILLWAY_INSTANCE_ID to its id. Stop sends SIGTERM to the group,
// then SIGKILL after stop_grace. A launcher that exits 0 by itself is "stopped", otherwise "failed".
class ExecRuntime : public Runtime {
 public:
  ExecRuntime(std::string launcher, std::chrono::milliseconds stop_grace)
      : launcher_(std::move(launcher)), stop_grace_(stop_grace) {}
  ~ExecRuntime() override;
  void Start(const InstanceSpec& spec) override;
  void Stop(const std::string& id) override;
  std::string State(const std::string& id) override;
  void Forget(const std::string& id) override;
  void Poll() override;

 private:
  struct Entry {
    int pid = -1;
    bool exited = false, stop_requested = false, killed = false;
    int exit_code = 0;
    std::chrono::steady_clock::time_point stop_at;
  };
  void ReapLocked();
  std::string launcher_;
  std::chrono::milliseconds stop_grace_;
  std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

}  // namespace spillway::agent
