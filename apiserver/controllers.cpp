#include "apiserver/controllers.hpp"

#include <prometheus/gauge.h>

#include "apiserver/provisioning/fleet.hpp"
#include "apiserver/provisioning/fleet_metrics.hpp"
#include "core/db.hpp"
#include "core/log.hpp"

namespace spillway {
namespace {
constexpr long long kLeaderLock = 7308324466018009602LL;
}

Controllers::Controllers(const Config& config, FleetMetrics& metrics) : config_(config), metrics_(metrics) {}
Controllers::~Controllers() { Stop(); }

void Controllers::Start() { thread_ = std::thread([this] { Loop(); }); }

void Controllers::Stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Controllers::Loop() {
  const FleetContext fc{config_, &metrics_};
  const auto tick = config_.Duration("controllers.tick");
  const auto reprice_every = config_.Duration("spot.reprice_interval");
  std::unique_ptr<pqxx::connection> conn;
  bool leader = false;
  auto last_reprice = std::chrono::steady_clock::time_point{};
  auto last_cleanup = std::chrono::steady_clock::time_point{};
  for (;;) {
    {
      std::unique_lock lk(mu_);
      if (stopping_) break;
    }
    try {
      if (!conn) {
        conn = std::make_unique<pqxx::connection>(
            WithConnectTimeout(config_.String("database.url"), config_.Duration("database.connect_timeout")));
        pqxx::nontransaction(*conn).exec("SET application_name = 'spillway-controllers'");
        PrepareAll(*conn);
      }
      if (!leader) {
        leader = pqxx::nontransaction(*conn).exec_params1("SELECT pg_try_advisory_lock($1)", kLeaderLock)[0].as<bool>();
        if (leader) {
          log::Info("this replica now runs the controllers");
          metrics_.leader->Set(1);
          last_reprice = {};
        }
      }
      if (leader) {
        const auto now = std::chrono::steady_clock::now();
        if (now - last_reprice >= reprice_every) {
          Reprice(*conn, fc);
          last_reprice = now;
        }
        FinishPreemptions(*conn, fc);
        FailSilentHosts(*conn, fc);
        FailUnreportedInstances(*conn, fc);
        PlacePending(*conn, fc);
        if (now - last_cleanup >= std::chrono::minutes(1)) {
          pqxx::nontransaction(*conn).exec_params(
              "DELETE FROM idempotency_keys WHERE created_at < now() - $1::bigint * interval '1 millisecond'",
              config_.Duration("idempotency.ttl").count());
          last_cleanup = now;
        }
        RefreshFleetGauges(*conn, fc);
      }
    } catch (const std::exception& e) {
      log::Warn("controllers: step failed", {{"error", e.what()}, {"leader", leader}});
      if (!conn || !conn->is_open() || IsUnavailable(e)) {
        // The session (and with it the advisory lock) is gone: another replica may lead now.
        conn.reset();
        if (leader) log::Warn("this replica lost the controllers' lock");
        leader = false;
        metrics_.leader->Set(0);
      }
    }
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, tick, [&] { return stopping_; });
  }
  conn.reset();  // ends the session, releasing the lock for another replica
  metrics_.leader->Set(0);
}

}  // namespace spillway
