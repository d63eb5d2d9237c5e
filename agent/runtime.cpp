#include "agent/runtime.hpp"

#include <boost/json.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "agent/files.hpp"

extern char** environ;

namespace spillway::agent {
namespace {

std::int64_t WallMs() { return EpochMs(NowMs()); }

std::map<std::string, std::string> ReadKeyValues(const std::string& path) {
  std::map<std::string, std::string> kv;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return kv;
}

std::int64_t Int(const std::map<std::string, std::string>& kv, const std::string& k, std::int64_t dflt = 0) {
  auto it = kv.find(k);
  if (it == kv.end()) return dflt;
  try {
    return std::stoll(it->second);
  } catch (const std::exception&) {
    return dflt;
  }
}

// Ids of the instances with a `<id><suffix>` file in dir.
std::vector<std::string> IdsIn(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> ids;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        ids.push_back(name.substr(0, name.size() - suffix.size()));
    }
    ::closedir(d);
  }
  return ids;
}

// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot): with the pid, it names one
// process; a pid reused by another process has another start time. 0 when there is no such process.
std::uint64_t ProcStart(int pid) {
  // Read with read(2), not a stream: a process that exits while it is read fails the read with
  // ESRCH, which a filebuf turns into an exception.
  const auto file = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  if (!file) return 0;
  const std::string& stat = *file;
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream rest(stat.substr(paren + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i)
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  return 0;
}

// "0,1": as CUDA_VISIBLE_DEVICES takes them.
std::string GpuList(const std::vector<int>& gpus) {
  std::string list;
  for (size_t i = 0; i < gpus.size(); ++i) list += (i ? "," : "") + std::to_string(gpus[i]);
  return list;
}

bool Alive(int pid, std::uint64_t start) { return pid > 0 && start != 0 && ProcStart(pid) == start; }

}  // namespace

bool PrepareStateDir(const std::string& dir, std::string* why) {
  std::string path;
  std::stringstream parts(dir);
  std::string part;
  if (!dir.empty() && dir[0] == '/') path = "/";
  while (std::getline(parts, part, '/')) {
    if (part.empty()) continue;
    path += part + "/";
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = "cannot create " + path + ": " + std::strerror(errno);
      return false;
    }
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    *why = dir + " is not writable: " + std::strerror(errno);
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// SimulatedRuntime

SimulatedRuntime::SimulatedRuntime(std::chrono::milliseconds boot_delay, std::string state_dir)
    : boot_delay_(boot_delay), state_dir_(std::move(state_dir)) {
  if (state_dir_.empty()) return;
  for (const auto& id : IdsIn(state_dir_, ".sim")) {
    const auto kv = ReadKeyValues(state_dir_ + "/" + id + ".sim");
    entries_[id] = Entry{Int(kv, "started_ms"), Int(kv, "stopped") != 0};
    log::Info("simulated instance taken up again", {{"instance_id", id}});
  }
}

void SimulatedRuntime::Save(const std::string& id, const Entry& e) {
  if (state_dir_.empty()) return;
  if (!WriteFileAtomically(state_dir_ + "/" + id + ".sim", "started_ms=" + std::to_string(e.started_ms) +
                                                               "\nstopped=" + (e.stopped ? "1" : "0") + "\n"))
    log::Error("cannot write the instance's state file", {{"instance_id", id}, {"dir", state_dir_}});
}

void SimulatedRuntime::Start(const InstanceSpec& spec) {
  std::lock_guard lk(mu_);
  if (entries_.count(spec.id)) return;
  const Entry e{WallMs(), false};
  entries_[spec.id] = e;
  Save(spec.id, e);
}

void SimulatedRuntime::Stop(const std::string& id) {
  std::lock_guard lk(mu_);
  if (auto it = entries_.find(id); it != entries_.end() && !it->second.stopped) {
    it->second.stopped = true;
    Save(id, it->second);
  }
}

std::string SimulatedRuntime::State(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return "";
  if (it->second.stopped) return "stopped";
  return WallMs() - it->second.started_ms >= boot_delay_.count() ? "running" : "starting";
}

void SimulatedRuntime::Forget(const std::string& id) {
  std::lock_guard lk(mu_);
  entries_.erase(id);
  if (!state_dir_.empty()) ::unlink((state_dir_ + "/" + id + ".sim").c_str());
}

std::vector<std::string> SimulatedRuntime::Known() {
  std::lock_guard lk(mu_);
  std::vector<std::string> ids;
  for (const auto& [id, e] : entries_) ids.push_back(id);
  return ids;
}

// ---------------------------------------------------------------------------------------------
// ExecRuntime

ExecRuntime::ExecRuntime(std::string launcher, std::chrono::milliseconds stop_grace, std::string state_dir,
                         std::string shim_binary, std::string volume_root)
    : launcher_(std::move(launcher)),
      stop_grace_(stop_grace),
      state_dir_(std::move(state_dir)),
      shim_binary_(std::move(shim_binary)),
      volume_root_(std::move(volume_root)) {
  for (const auto& id : IdsIn(state_dir_, ".state")) {
    const auto kv = ReadKeyValues(state_dir_ + "/" + id + ".state");
    Entry e;
    e.pid = static_cast<int>(Int(kv, "pid", -1));
    e.proc_start = static_cast<std::uint64_t>(Int(kv, "proc_start"));
    e.stop_requested = Int(kv, "stop_requested") != 0;
    e.kill_at_ms = Int(kv, "kill_at_ms");
    e.killed = Int(kv, "killed") != 0;
    // The shim is no longer our child: init reaps it. Its pid and start time still tell whether it
    // may be about to write the exit status.
    e.shim_pid = -1;
    e.shim = static_cast<int>(Int(kv, "shim", -1));
    e.shim_start = static_cast<std::uint64_t>(Int(kv, "shim_start"));
    entries_[id] = e;
    RefreshLocked(id, entries_[id]);
    log::Info("instance taken up again after an agent restart",
              {{"instance_id", id}, {"pid", e.pid}, {"running", !entries_[id].exited}});
  }
}

ExecRuntime::~ExecRuntime() {
  // Instances outlive the agent. Reap the shims that have already finished; the rest go to init.
  std::lock_guard lk(mu_);
  for (auto& [id, e] : entries_)
    if (e.shim_pid > 0) ::waitpid(e.shim_pid, nullptr, WNOHANG);
}

void ExecRuntime::SaveLocked(const std::string& id, const Entry& e) {
  std::ostringstream s;
  s << "pid=" << e.pid << "\nproc_start=" << e.proc_start << "\nstop_requested=" << (e.stop_requested ? 1 : 0)
    << "\nkill_at_ms=" << e.kill_at_ms << "\nkilled=" << (e.killed ? 1 : 0) << "\nshim=" << e.shim
    << "\nshim_start=" << e.shim_start << "\n";
  if (!WriteFileAtomically(state_dir_ + "/" + id + ".state", s.str()))
    log::Error("cannot write the instance's state file", {{"instance_id", id}, {"dir", state_dir_}});
}

void ExecRuntime::RefreshLocked(const std::string& id, Entry& e) {
  if (e.exited) return;
  if (e.shim_pid > 0 && ::waitpid(e.shim_pid, nullptr, WNOHANG) == e.shim_pid) e.shim_pid = -1;
  const auto kv = ReadKeyValues(state_dir_ + "/" + id + ".exit");
  if (kv.count("code")) {
    e.exited = true;
    e.exit_code = static_cast<int>(Int(kv, "code", 1));
    log::Info("launcher exited", {{"instance_id", id}, {"exit_code", e.exit_code}});
    return;
  }
  // Running, or its shim is about to write the status.
  if (Alive(e.pid, e.proc_start) || e.shim_pid > 0 || Alive(e.shim, e.shim_start)) return;
  // Gone without an exit status: killed with its shim, or the host restarted.
  e.exited = true;
  e.exit_code = 128 + SIGKILL;
  log::Warn("launcher vanished without an exit status", {{"instance_id", id}, {"pid", e.pid}});
}

bool ExecRuntime::PrepareSpec(const InstanceSpec& spec, const std::string& devices, std::vector<std::string>* env,
                              std::string* why) {
  const protocol::WorkloadSpec& w = spec.workload;
  const std::string base = state_dir_ + "/" + spec.id;
  // Volumes: a directory each under the volume root, made on first use.
  boost::json::array volumes;
  std::string volume_list;
  for (const auto& v : w.volumes) {
    if (volume_root_.empty()) {
      *why = "the instance has volumes and this agent has no --volume-root";
      return false;
    }
    const std::string dir = volume_root_ + "/" + v.volume_id;
    if (!PrepareStateDir(dir, why)) return false;
    volumes.push_back(boost::json::object{
        {"volume_id", v.volume_id}, {"mount_path", v.mount_path}, {"size_gb", v.size_gb}, {"host_path", dir}});
    volume_list += (volume_list.empty() ? "" : " ") + dir + ":" + v.mount_path;
  }
  std::string ports;
  for (const auto& p : w.ports)
    ports += (ports.empty() ? "" : " ") + std::to_string(p.internal) + ":" + std::to_string(p.external) + "/" + p.protocol;
  std::string env_file, command_file, keys_file;
  for (const auto& [name, value] : w.env) env_file += name + "=" + value + "\n";
  for (const auto& arg : w.command) command_file += arg + std::string(1, '\0');
  for (const auto& k : w.authorized_keys) keys_file += k + "\n";
  auto spec_json = protocol::ToJson(w).as_object();
  spec_json["volumes"] = std::move(volumes);
  spec_json["instance_id"] = spec.id;
  boost::json::array gpus;
  for (int g : spec.gpu_indices) gpus.push_back(g);
  spec_json["gpu_indices"] = std::move(gpus);
  const std::int64_t grace_seconds = (stop_grace_.count() + 999) / 1000;
  spec_json["stop_grace_seconds"] = grace_seconds;
  // The env and the spec hold the tenant's secrets: readable by the agent's user only.
  if (!WriteFileAtomically(base + ".spec.json", boost::json::serialize(spec_json) + "\n", 0600) ||
      !WriteFileAtomically(base + ".env", env_file, 0600) || !WriteFileAtomically(base + ".command", command_file, 0600) ||
      !WriteFileAtomically(base + ".authorized_keys", keys_file, 0644)) {
    *why = "cannot write the instance's spec files under " + state_dir_;
    return false;
  }
  env->push_back("CUDA_VISIBLE_DEVICES=" + devices);
  env->push_back("SPILLWAY_INSTANCE_ID=" + spec.id);
  env->push_back("SPILLWAY_GPU_INDICES=" + devices);
  env->push_back("SPILLWAY_SPEC_FILE=" + base + ".spec.json");
  env->push_back("SPILLWAY_IMAGE=" + w.image.value_or(""));
  env->push_back("SPILLWAY_COMMAND_FILE=" + base + ".command");
  env->push_back("SPILLWAY_ENV_FILE=" + base + ".env");
  env->push_back("SPILLWAY_AUTHORIZED_KEYS_FILE=" + base + ".authorized_keys");
  env->push_back("SPILLWAY_PORTS=" + ports);
  env->push_back("SPILLWAY_VOLUMES=" + volume_list);
  env->push_back("SPILLWAY_DISK_GB=" + (w.disk_gb ? std::to_string(*w.disk_gb) : std::string()));
  env->push_back("SPILLWAY_STOP_GRACE_SECONDS=" + std::to_string(grace_seconds));
  return true;
}

void ExecRuntime::Start(const InstanceSpec& spec) {
  std::lock_guard lk(mu_);
  if (entries_.count(spec.id)) return;
  // Everything the children need is prepared before fork: after it, only async-signal-safe calls.
  // The agent's own SPILLWAY_* variables are not the launcher's business.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    if (kv.rfind("CUDA_VISIBLE_DEVICES=", 0) != 0 && kv.rfind("SPILLWAY_", 0) != 0) env_strings.push_back(kv);
  }
  const std::string devices = GpuList(spec.gpu_indices);
  std::string why;
  if (!PrepareSpec(spec, devices, &env_strings, &why)) {
    Entry failed;
    failed.exited = true;
    failed.exit_code = 127;
    log::Error("could not start the launcher", {{"instance_id", spec.id}, {"error", why}});
    entries_[spec.id] = failed;
    return;
  }
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string exit_path = state_dir_ + "/" + spec.id + ".exit";
  ::unlink(exit_path.c_str());
  std::string bin = shim_binary_, flag = "--shim", exit_arg = exit_path, cmd = launcher_;
  char* argv[] = {bin.data(), flag.data(), exit_arg.data(), cmd.data(), nullptr};

  int fds[2];
  Entry e;
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    e.exited = true;
    e.exit_code = 127;
    log::Error("could not start the launcher: no pipe", {{"instance_id", spec.id}});
    entries_[spec.id] = e;
    return;
  }
  // Between fork and exec only async-signal-safe calls: everything was prepared above.
  const pid_t shim = ::fork();
  if (shim == 0) {
    ::setsid();  // a session of its own: it outlives the agent
    if (fds[1] == 3) ::fcntl(3, F_SETFD, 0);
    else ::dup2(fds[1], 3);  // descriptor 3 carries the launcher's pid back (dup2 clears close-on-exec)
    ::close_range(4, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the agent blocks SIGTERM/SIGINT in every thread
    ::signal(SIGPIPE, SIG_DFL);
    ::execve(bin.c_str(), argv, envp.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  pid_t child = -1;
  if (shim < 0 || ::read(fds[0], &child, sizeof child) != sizeof child) child = -1;
  ::close(fds[0]);
  if (child <= 0) {
    e.exited = true;
    e.exit_code = 127;
    log::Error("could not start the launcher", {{"instance_id", spec.id}});
  } else {
    e.pid = child;
    e.shim_pid = e.shim = shim;
    e.proc_start = ProcStart(child);
    e.shim_start = ProcStart(shim);
    log::Info("launcher started", {{"instance_id", spec.id}, {"pid", child}, {"cuda_visible_devices", devices}});
  }
  entries_[spec.id] = e;
  if (!e.exited) SaveLocked(spec.id, e);
}

int RunShim(const std::string& exit_file, const std::string& launcher) {
  const pid_t child = ::fork();
  if (child == 0) {
    ::setpgid(0, 0);  // its own group, so Stop reaches everything the launcher started
    ::close(3);
    ::execl("/bin/sh", "sh", "-c", launcher.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (child < 0) return 127;
  ::setpgid(child, child);
  ::write(3, &child, sizeof child);
  ::close(3);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  WriteFileAtomically(exit_file, "code=" + std::to_string(code) + "\n");
  return 0;
}

void ExecRuntime::Stop(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.stop_requested) return;
  Entry& e = it->second;
  RefreshLocked(id, e);
  e.stop_requested = true;
  e.kill_at_ms = WallMs() + stop_grace_.count();
  if (!e.exited) {
    SaveLocked(id, e);
    ::kill(-e.pid, SIGTERM);
  }
}

std::string ExecRuntime::State(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return "";
  Entry& e = it->second;
  RefreshLocked(id, e);
  if (!e.exited) return "running";
  return (e.stop_requested || e.exit_code == 0) ? "stopped" : "failed";
}

void ExecRuntime::Forget(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  RefreshLocked(id, e);
  if (!e.exited && Alive(e.pid, e.proc_start)) ::kill(-e.pid, SIGKILL);
  if (e.shim_pid > 0) ::waitpid(e.shim_pid, nullptr, 0);  // it exits once the launcher is gone
  for (const char* suffix : {".state", ".exit", ".spec.json", ".env", ".command", ".authorized_keys"})
    ::unlink((state_dir_ + "/" + id + suffix).c_str());
  entries_.erase(it);
}

void ExecRuntime::Poll() {
  std::lock_guard lk(mu_);
  const std::int64_t now = WallMs();
  for (auto& [id, e] : entries_) {
    RefreshLocked(id, e);
    if (e.stop_requested && !e.exited && !e.killed && now >= e.kill_at_ms) {
      ::kill(-e.pid, SIGKILL);
      e.killed = true;
      SaveLocked(id, e);
      log::Warn("launcher ignored SIGTERM: killed", {{"instance_id", id}});
    }
  }
}

std::vector<std::string> ExecRuntime::Known() {
  std::lock_guard lk(mu_);
  std::vector<std::string> ids;
  for (const auto& [id, e] : entries_) ids.push_back(id);
  return ids;
}

}  // namespace spillway::agent
