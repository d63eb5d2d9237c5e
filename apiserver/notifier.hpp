#pragma once
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/duration.hpp"

namespace spillway {

class KeyCache;

// Wakes long-polling agents when their host's assignments change. One thread per replica LISTENs on
// the `spillway_assignments` channel (a trigger notifies on every assignment_version change, from any
// replica), so a waiting request holds no database connection. On the same connection it LISTENs on
// `spillway_auth` (API key revoked, tenant suspended) and keeps `key_cache` told, and whether it is
// listening at all.
class AssignmentNotifier {
 public:
  AssignmentNotifier(std::string database_url, Millis connect_timeout, KeyCache* key_cache = nullptr);
  ~AssignmentNotifier();
  void Start();
  // Wakes every waiter and makes later waits return at once (shutdown).
  void Stop();
  // Calls `wake` exactly once: when host_id's assignments change, after `timeout`, or at Stop.
  void Wait(const std::string& host_id, Millis timeout, std::function<void()> wake);
  // Told of every change too (hosts, or all of them), and whether it is listening at all: a cache
  // of what the assignments were (the heartbeats' fast path) is right only while it is. Set before Start.
  using Observer = std::function<void(const std::vector<std::string>& hosts, bool all, bool listening)>;
  void Observe(Observer observer) { observer_ = std::move(observer); }

 private:
  // Waiters by host (a change wakes its host's) and by deadline (the loop's tick wakes those due):
  // each tick and change costs what it wakes, not a walk over every waiting agent.
  using Deadlines = std::multimap<std::chrono::steady_clock::time_point, std::string>;
  struct Waiter {
    Deadlines::iterator deadline;
    std::function<void()> wake;
  };
  void Loop();
  void Fire(const std::vector<std::string>& hosts, bool all);

  Observer observer_;
  std::string url_;
  Millis connect_timeout_;
  KeyCache* key_cache_;
  std::mutex mu_;
  std::multimap<std::string, Waiter> waiters_;
  Deadlines deadlines_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace spillway
