#include "core/periodic.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "core/log.hpp"

namespace spillway {
namespace {
const Statement kTryLead{"leader_try_lock", "SELECT pg_try_advisory_lock($1) AS leading"};
}

PeriodicSteps::PeriodicSteps(LeaderOptions options, const Clock& clock, prometheus::Registry& registry)
    : options_(std::move(options)), clock_(clock) {
  using namespace prometheus;
  leader_ = &BuildGauge()
                 .Name(options_.leader_metric)
                 .Help("Whether this replica runs these periodic steps (holds their advisory lock): 1 or 0")
                 .Register(registry)
                 .Add({});
  seconds_ = &BuildHistogram()
                  .Name("spillway_controller_step_seconds")
                  .Help("Time one run of a periodic step took, by step")
                  .Register(registry);
  failures_ = &BuildCounter()
                   .Name("spillway_controller_step_failures_total")
                   .Help("Runs of a periodic step that failed, by step")
                   .Register(registry);
}

PeriodicSteps::~PeriodicSteps() { Stop(); }

void PeriodicSteps::Add(PeriodicStep step) {
  // Series exist from the start, so a step that never failed shows 0 rather than nothing.
  failures_->Add({{"step", step.name}});
  steps_.push_back(std::move(step));
}

void PeriodicSteps::Start() { thread_ = std::thread([this] { Loop(); }); }

void PeriodicSteps::Stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  std::lock_guard join(join_mu_);  // a second caller waits for the first's join
  if (thread_.joinable()) thread_.join();
}

void PeriodicSteps::Loop() {
  using Steady = std::chrono::steady_clock;
  std::unique_ptr<pqxx::connection> conn;
  bool leader = false;
  TimeMs listening_since{};
  Steady::time_point last_tick{};
  std::vector<Steady::time_point> last_run(steps_.size());
  std::vector<prometheus::Histogram*> hist;
  for (const auto& s : steps_)
    hist.push_back(&seconds_->Add({{"step", s.name}}, prometheus::Histogram::BucketBoundaries{
                                                          0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30}));
  auto lose = [&](const char* why) {
    conn.reset();  // ends the session, releasing the lock for another replica
    if (leader) log::Warn("this replica no longer runs the periodic steps", {{"why", why}});
    leader = false;
    leader_->Set(0);
  };
  for (;;) {
    {
      std::unique_lock lk(mu_);
      if (stopping_) break;
    }
    try {
      if (!conn) conn = OpenSession(options_.session);
      if (!leader) {
        pqxx::nontransaction tx(*conn);
        leader = tx.exec_prepared(kTryLead.name, options_.lock_key)[0]["leading"].as<bool>();
        if (leader) {
          log::Info("this replica now runs the periodic steps");
          leader_->Set(1);
          listening_since = clock_.Now();
          last_tick = Steady::now();
          std::fill(last_run.begin(), last_run.end(), Steady::time_point{});
        }
      }
    } catch (const std::exception& e) {
      log::Warn("periodic steps: cannot reach the database", {{"error", e.what()}});
      lose("database unreachable");
    }
    if (leader) {
      const auto tick_start = Steady::now();
      if (tick_start - last_tick > options_.stall_limit) {
        // The loop did not run for a while (stopped, starved): nothing was being heard meanwhile.
        log::Warn("periodic steps stalled; judging silence afresh from now",
                  {{"stalled_ms", std::chrono::duration_cast<Millis>(tick_start - last_tick).count()}});
        listening_since = clock_.Now();
      }
      last_tick = tick_start;
      for (size_t i = 0; i < steps_.size() && conn; ++i) {
        const auto now = Steady::now();
        if (last_run[i] != Steady::time_point{} && now - last_run[i] < steps_[i].interval) continue;
        last_run[i] = now;
        try {
          steps_[i].run(*conn, StepContext{clock_.Now(), listening_since});
          hist[i]->Observe(std::chrono::duration<double>(Steady::now() - now).count());
        } catch (const std::exception& e) {
          failures_->Add({{"step", steps_[i].name}}).Increment();
          log::Warn("periodic step failed", {{"step", steps_[i].name}, {"error", e.what()}});
          if (!conn->is_open() || IsUnavailable(e)) lose("lost the database session");
        }
      }
    }
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, options_.tick, [&] { return stopping_; });
  }
  conn.reset();
  leader_->Set(0);
}

}  // namespace spillway
