#include "apiserver/notifier.hpp"

#include <pqxx/pqxx>

#include <algorithm>
#include <functional>

#include "apiserver/auth/key_cache.hpp"
#include "core/db.hpp"
#include "core/log.hpp"

namespace spillway {
namespace {
class Receiver : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& c, const char* channel, std::function<void(const std::string&)> on)
      : pqxx::notification_receiver(c, channel), on_(std::move(on)) {}
  void operator()(const std::string& payload, int) override { on_(payload); }

 private:
  std::function<void(const std::string&)> on_;
};
}  // namespace

AssignmentNotifier::AssignmentNotifier(std::string url, Millis connect_timeout, KeyCache* key_cache)
    : url_(std::move(url)), connect_timeout_(connect_timeout), key_cache_(key_cache) {}

AssignmentNotifier::~AssignmentNotifier() { Stop(); }

void AssignmentNotifier::Start() { thread_ = std::thread([this] { Loop(); }); }

void AssignmentNotifier::Stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (observer_) observer_({}, true, false);
  Fire({}, true);
}

void AssignmentNotifier::Wait(const std::string& host_id, Millis timeout, std::function<void()> wake) {
  {
    std::lock_guard lk(mu_);
    if (!stopping_) {
      const auto deadline = deadlines_.emplace(std::chrono::steady_clock::now() + timeout, host_id);
      waiters_.emplace(host_id, Waiter{deadline, std::move(wake)});
      return;
    }
  }
  wake();
}

void AssignmentNotifier::Fire(const std::vector<std::string>& hosts, bool all) {
  std::vector<std::function<void()>> due;
  {
    std::lock_guard lk(mu_);
    if (all) {
      for (auto& [host, w] : waiters_) due.push_back(std::move(w.wake));
      waiters_.clear();
      deadlines_.clear();
    } else {
      for (const auto& host : hosts) {
        auto [from, to] = waiters_.equal_range(host);
        for (auto it = from; it != to; ++it) {
          due.push_back(std::move(it->second.wake));
          deadlines_.erase(it->second.deadline);
        }
        waiters_.erase(from, to);
      }
      // Then those whose wait is over: the earliest deadlines first, each found among its host's.
      const auto now = std::chrono::steady_clock::now();
      while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
        const auto d = deadlines_.begin();
        auto [from, to] = waiters_.equal_range(d->second);
        for (auto it = from; it != to; ++it)
          if (it->second.deadline == d) {
            due.push_back(std::move(it->second.wake));
            waiters_.erase(it);
            break;
          }
        deadlines_.erase(d);
      }
    }
  }
  for (auto& w : due) w();
}

void AssignmentNotifier::Loop() {
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<Receiver> receiver, auth_receiver;
  std::vector<std::string> changed;
  auto lost = [&] {
    if (key_cache_) key_cache_->SetListening(false);
    if (observer_) observer_({}, true, false);
    auth_receiver.reset();
    receiver.reset();
    conn.reset();
  };
  auto last_attempt = std::chrono::steady_clock::now() - std::chrono::seconds(10);
  auto last_probe = last_attempt;
  int listening_pid = 0;
  for (;;) {
    {
      std::lock_guard lk(mu_);
      if (stopping_) break;
    }
    if (!conn && std::chrono::steady_clock::now() - last_attempt > std::chrono::milliseconds(500)) {
      last_attempt = std::chrono::steady_clock::now();
      try {
        conn = OpenSession({url_, "spillway-notifier", connect_timeout_, Millis(0)});
        receiver = std::make_unique<Receiver>(*conn, "spillway_assignments",
                                              [&changed](const std::string& host) { changed.push_back(host); });
        if (key_cache_)
          auth_receiver = std::make_unique<Receiver>(
              *conn, "spillway_auth", [this](const std::string& what) { key_cache_->OnNotification(what); });
        pqxx::nontransaction(*conn).exec("SELECT 1");  // LISTEN is issued; make sure it took
        listening_pid = conn->backendpid();
        if (observer_) observer_({}, true, true);
        Fire({}, true);  // changes while we were not listening would otherwise be missed
        if (key_cache_) key_cache_->SetListening(true);
      } catch (const std::exception& e) {
        lost();
        log::Debug("notification listener cannot connect", {{"error", e.what()}});
      }
    }
    if (conn) {
      try {
        conn->await_notification(0, 100'000);
        // A connection that died quietly would also stop invalidations: look at it now and then.
        if (std::chrono::steady_clock::now() - last_probe > std::chrono::seconds(5)) {
          last_probe = std::chrono::steady_clock::now();
          pqxx::nontransaction(*conn).exec("SELECT 1");
        }
        // libpqxx 6 may reopen a broken connection by itself; notifications sent in between are
        // lost, so a different backend counts as a lost connection.
        if (!conn->is_open() || conn->backendpid() != listening_pid)
          throw pqxx::broken_connection("the listening connection was reset");
      } catch (const std::exception& e) {
        log::Warn("notification listener lost its connection", {{"error", e.what()}});
        lost();
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (observer_ && !changed.empty() && conn) observer_(changed, false, true);
    Fire(changed, false);
    changed.clear();
  }
  lost();
}

}  // namespace spillway
