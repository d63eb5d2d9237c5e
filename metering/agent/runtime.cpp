#include "metering/agent/runtime.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.hpp"

namespace spillway::agent {

void SimulatedRuntime::Start(const InstanceSpec& spec) {
  std::lock_guard lk(mu_);
  entries_.try_emplace(spec.id, Entry{std::chrono::steady_clock::now(), false});
}

void SimulatedRuntime::Stop(const std::string& id) {
  std::lock_guard lk(mu_);
  if (auto it = entries_.find(id); it != entries_.end()) it->second.stopped = true;
}

std::string SimulatedRuntime::State(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return "";
  if (it->second.stopped) return "stopped";
  return std::chrono::steady_clock::now() - it->second.started >= boot_delay_ ? "running" : "starting";
}

void SimulatedRuntime::Forget(const std::string& id) {
  std::lock_guard lk(mu_);
  entries_.erase(id);
}

ExecRuntime::~ExecRuntime() {
  std::lock_guard lk(mu_);
  for (auto& [id, e] : entries_)
    if (!e.exited) ::kill(-e.pid, SIGKILL);
  for (auto& [id, e] : entries_)
    if (!e.exited) ::waitpid(e.pid, nullptr, 0);
}

void ExecRuntime::Start(const InstanceSpec& spec) {
  std::lock_guard lk(mu_);
  if (entries_.count(spec.id)) return;
  std::string devices;
  for (size_t i = 0; i < spec.gpu_indices.size(); ++i) devices += (i ? "," : "") + std::to_string(spec.gpu_indices[i]);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);  // its own group, so Stop reaches everything the launcher started
    ::setenv("CUDA_VISIBLE_DEVICES", devices.c_str(), 1);
    ::setenv("SPILLWAY_INSTANCE_ID", spec.id.c_str(), 1);
    ::execl("/bin/sh", "sh", "-c", launcher_.c_str(), static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  Entry e;
  if (pid < 0) {
    e.exited = true;
    e.exit_code = 127;
    log::Error("could not start the launcher", {{"instance_id", spec.id}});
  } else {
    ::setpgid(pid, pid);
    e.pid = pid;
    log::Info("launcher started", {{"instance_id", spec.id}, {"pid", pid}, {"cuda_visible_devices", devices}});
  }
  entries_[spec.id] = e;
}

void ExecRuntime::ReapLocked() {
  for (auto& [id, e] : entries_) {
    if (e.exited || e.pid <= 0) continue;
    int status = 0;
    if (::waitpid(e.pid, &status, WNOHANG) == e.pid) {
      e.exited = true;
      e.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      log::Info("launcher exited", {{"instance_id", id}, {"exit_code", e.exit_code}});
    }
  }
}

void ExecRuntime::Stop(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.stop_requested) return;
  it->second.stop_requested = true;
  it->second.stop_at = std::chrono::steady_clock::now() + stop_grace_;
  if (!it->second.exited) ::kill(-it->second.pid, SIGTERM);
}

std::string ExecRuntime::State(const std::string& id) {
  std::lock_guard lk(mu_);
  ReapLocked();
  auto it = entries_.find(id);
  if (it == entries_.end()) return "";
  const Entry& e = it->second;
  if (!e.exited) return "running";
  return (e.stop_requested || e.exit_code == 0) ? "stopped" : "failed";
}

void ExecRuntime::Forget(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  if (!it->second.exited) {
    ::kill(-it->second.pid, SIGKILL);
    ::waitpid(it->second.pid, nullptr, 0);
  }
  entries_.erase(it);
}

void ExecRuntime::Poll() {
  std::lock_guard lk(mu_);
  ReapLocked();
  const auto now = std::chrono::steady_clock::now();
  for (auto& [id, e] : entries_) {
    if (e.stop_requested && !e.exited && !e.killed && now >= e.stop_at) {
      ::kill(-e.pid, SIGKILL);
      e.killed = true;
      log::Warn("launcher ignored SIGTERM: killed", {{"instance_id", id}});
    }
  }
}

}  // namespace spillway::agent
