#pragma once
// How an agent runs the instances assigned to its host. `simulated` stands in for real workloads
// in demos and tests; `exec` runs an operator-configured launcher command per instance.
//
// A host's instances outlive its agent: each runtime keeps what it started under a state directory
// and takes it up again when the agent starts (upgrading or restarting the agent is not an outage
// of the customers' jobs). Stopping instances is an explicit act: the assignments say so, or the
// agent is drained (Drain, `spillway-agent --drain-on-exit`) when a host is decommissioned.
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "protocol/agent.hpp"

namespace spillway::agent {

struct InstanceSpec {
  std::string id;
  std::vector<int> gpu_indices;
  protocol::WorkloadSpec workload = {};  // what the tenant asked to run
};

class Runtime {
 public:
  virtual ~Runtime() = default;  // leaves instances running
  virtual void Start(const InstanceSpec& spec) = 0;  // no-op when already known
  virtual void Stop(const std::string& id) = 0;      // no-op when stopped or unknown
  // "starting", "running", "stopped" or "failed"; "" when unknown.
  virtual std::string State(const std::string& id) = 0;
  virtual void Forget(const std::string& id) = 0;    // stops it now if needed and drops it
  virtual void Poll() {}                             // periodic housekeeping (reaping, escalation)
  virtual std::vector<std::string> Known() = 0;      // the ids it holds, adopted ones included
};
using RuntimePtr = std::unique_ptr<Runtime>;

// Instances "boot" for boot_delay, then run until stopped. With a state directory, each one is a
// small file there (its start time and whether it was stopped), so a restarted agent finds them.
class SimulatedRuntime : public Runtime {
 public:
  explicit SimulatedRuntime(std::chrono::milliseconds boot_delay, std::string state_dir = "");
  void Start(const InstanceSpec& spec) override;
  void Stop(const std::string& id) override;
  std::string State(const std::string& id) override;
  void Forget(const std::string& id) override;
  std::vector<std::string> Known() override;

 private:
  struct Entry {
    std::int64_t started_ms = 0;  // wall clock: it must mean the same to the next agent process
    bool stopped = false;
  };
  void Save(const std::string& id, const Entry& e);
  std::chrono::milliseconds boot_delay_;
  std::string state_dir_;
  std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

// Runs `/bin/sh -c LAUNCHER` per instance with CUDA_VISIBLE_DEVICES set to the instance's GPU
// indices, SPILLWAY_INSTANCE_ID to its id, and the launch spec handed over as files in the state
// directory and SPILLWAY_* variables (README, "Writing a launcher"): `<id>.spec.json` (all of it),
// `<id>.env` (the tenant's env, NAME=value lines, mode 0600), `<id>.command` (the command's
// arguments, each ended by NUL), `<id>.authorized_keys`; volumes are directories under the
// volume root (`--volume-root`, a filesystem shared by the region's hosts). Each launcher runs under a shim (RunShim, exec'd from
// the agent binary in a session of its own) that waits for the launcher (in its own process group)
// and writes its exit status to the state directory, so the instance neither dies with nor depends on
// the agent. The state directory
// holds, per instance, `<id>.state` (launcher pid, its start time in /proc, whether a stop was
// asked and when it escalates) and `<id>.exit` once it ended. Stop sends SIGTERM to the launcher's
// group, then SIGKILL after stop_grace. A launcher that exits 0 by itself is "stopped", otherwise
// "failed"; one that vanished without an exit status (the host rebooted) is "failed".
class ExecRuntime : public Runtime {
 public:
  // shim_binary: a spillway-agent binary, run as `spillway-agent --shim EXIT_FILE LAUNCHER` (see
  // RunShim); the agent passes itself.
  ExecRuntime(std::string launcher, std::chrono::milliseconds stop_grace, std::string state_dir,
              std::string shim_binary, std::string volume_root = "");
  ~ExecRuntime() override;
  void Start(const InstanceSpec& spec) override;
  void Stop(const std::string& id) override;
  std::string State(const std::string& id) override;
  void Forget(const std::string& id) override;
  void Poll() override;
  std::vector<std::string> Known() override;

 private:
  struct Entry {
    int pid = -1;                 // the launcher; also its process group
    std::uint64_t proc_start = 0;  // /proc/<pid>/stat start time, so a reused pid is not taken for it
    int shim_pid = -1;            // our child while this agent process started it; -1 when adopted
    int shim = -1;                // the shim's pid and start time, to tell whether an adopted one
    std::uint64_t shim_start = 0;  // is still about to write the exit status
    bool stop_requested = false, killed = false;
    std::int64_t kill_at_ms = 0;  // wall clock: SIGKILL after this once a stop was asked
    bool exited = false;
    int exit_code = 0;
  };
  void SaveLocked(const std::string& id, const Entry& e);
  void RefreshLocked(const std::string& id, Entry& e);
  // Writes the spec's files and adds the launcher's variables to *env; false, with *why, when it
  // cannot.
  bool PrepareSpec(const InstanceSpec& spec, const std::string& devices, std::vector<std::string>* env,
                   std::string* why);
  std::string launcher_;
  std::chrono::milliseconds stop_grace_;
  std::string state_dir_;
  std::string shim_binary_;
  std::string volume_root_;
  std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

// `spillway-agent --shim EXIT_FILE LAUNCHER`: the shim, a fresh process (exec'd, so it shares no
// state with the multi-threaded agent that started it) in a session of its own. It starts
// `/bin/sh -c LAUNCHER` in a process group of its own, writes that pid to descriptor 3, waits for it
// and writes `code=N` to EXIT_FILE (atomically). Returns the shim's exit code.
int RunShim(const std::string& exit_file, const std::string& launcher);

// Creates `dir` (and parents) when missing; false with `why` when it cannot be used.
bool PrepareStateDir(const std::string& dir, std::string* why);

}  // namespace spillway::agent
