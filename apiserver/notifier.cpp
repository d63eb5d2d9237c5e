#include "apiserver/notifier.hpp"

#include <pqxx/pqxx>

#include <algorithm>

#include "core/db.hpp"
#include "core/log.hpp"

namespace spillway {
namespace {
class Receiver : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& c, std::vector<std::string>* out)
      : pqxx::notification_receiver(c, "spillway_assignments"), out_(out) {}
  void operator()(const std::string& payload, int) override { out_->push_back(payload); }

 private:
  std::vector<std::string>* out_;
};
}  // namespace

AssignmentNotifier::AssignmentNotifier(std::string url, Millis connect_timeout)
    : url_(std::move(url)), connect_timeout_(connect_timeout) {}

AssignmentNotifier::~AssignmentNotifier() { Stop(); }

void AssignmentNotifier::Start() { thread_ = std::thread([this] { Loop(); }); }

void AssignmentNotifier::Stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  Fire({}, true);
}

void AssignmentNotifier::Wait(const std::string& host_id, Millis timeout, std::function<void()> wake) {
  {
    std::lock_guard lk(mu_);
    if (!stopping_) {
      waiters_.emplace(host_id, Waiter{std::chrono::steady_clock::now() + timeout, std::move(wake)});
      return;
    }
  }
  wake();
}

void AssignmentNotifier::Fire(const std::vector<std::string>& hosts, bool all) {
  std::vector<std::function<void()>> due;
  {
    std::lock_guard lk(mu_);
    const auto now = std::chrono::steady_clock::now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      const bool hit = all || it->second.deadline <= now ||
                       std::find(hosts.begin(), hosts.end(), it->first) != hosts.end();
      if (hit) {
        due.push_back(std::move(it->second.wake));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& w : due) w();
}

void AssignmentNotifier::Loop() {
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<Receiver> receiver;
  std::vector<std::string> changed;
  auto last_attempt = std::chrono::steady_clock::now() - std::chrono::seconds(10);
  for (;;) {
    {
      std::lock_guard lk(mu_);
      if (stopping_) break;
    }
    if (!conn && std::chrono::steady_clock::now() - last_attempt > std::chrono::milliseconds(500)) {
      last_attempt = std::chrono::steady_clock::now();
      try {
        conn = std::make_unique<pqxx::connection>(WithConnectTimeout(url_, connect_timeout_));
        receiver = std::make_unique<Receiver>(*conn, &changed);
        pqxx::nontransaction(*conn).exec("SELECT 1");  // LISTEN is issued; make sure it took
        Fire({}, true);  // changes while we were not listening would otherwise be missed
      } catch (const std::exception& e) {
        receiver.reset();
        conn.reset();
        log::Debug("assignment notifier cannot connect", {{"error", e.what()}});
      }
    }
    if (conn) {
      try {
        conn->await_notification(0, 100'000);
      } catch (const std::exception& e) {
        log::Warn("assignment notifier lost its connection", {{"error", e.what()}});
        receiver.reset();
        conn.reset();
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Fire(changed, false);
    changed.clear();
  }
  receiver.reset();
  conn.reset();
}

}  // namespace spillway
