#include "core/db.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <random>

#include "core/errors.hpp"
#include "core/log.hpp"
#include "core/pg_async.hpp"

namespace spillway {
namespace {

std::vector<const Statement*>& Registry() {
  static std::vector<const Statement*> statements;
  return statements;
}

std::int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Statement::Statement(const char* n, const char* s) : name(n), sql(s) { Registry().push_back(this); }

void PrepareAll(pqxx::connection_base& conn) {
  for (const Statement* s : Registry()) conn.prepare(s->name, s->sql);
}

bool IsRetryable(const std::exception& e) {
  if (dynamic_cast<const pqxx::transaction_rollback*>(&e)) return true;
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) return sql->sqlstate().rfind("40", 0) == 0;
  return false;
}

void PauseBeforeRetry(int attempt) {
  // A random pause grows with the attempt, so two transactions that deadlocked do not meet again.
  thread_local std::minstd_rand rng(static_cast<unsigned>(std::hash<std::thread::id>()(std::this_thread::get_id())));
  std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % (2000u * static_cast<unsigned>(attempt))));
}

const char* const kSessionSetupSql =
    "SELECT set_config('TimeZone', 'UTC', false), set_config('application_name', $1, false), "
    "set_config('statement_timeout', $2, false), set_config('client_connection_check_interval', '1000', false)";

std::unique_ptr<pqxx::connection> OpenSession(const SessionOptions& options) {
  auto conn = std::make_unique<pqxx::connection>(WithConnectTimeout(options.url, options.connect_timeout));
  pqxx::nontransaction setup(*conn);
  setup.exec_params(kSessionSetupSql, options.application_name, std::to_string(options.statement_timeout.count()));
  setup.commit();
  PrepareAll(*conn);
  return conn;
}

bool IsUnavailable(const std::exception& e) {
  if (dynamic_cast<const pqxx::broken_connection*>(&e)) return true;
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& state = sql->sqlstate();
    // 08: connection exception; 57P01-57P03: admin/crash shutdown, cannot connect now.
    return state.rfind("08", 0) == 0 || state == "57P01" || state == "57P02" || state == "57P03";
  }
  return false;
}

std::string WithConnectTimeout(const std::string& url, Millis timeout) {
  const auto secs = std::max<std::int64_t>(1, (timeout.count() + 999) / 1000);
  if (url.rfind("postgres://", 0) == 0 || url.rfind("postgresql://", 0) == 0)
    return url + (url.find('?') == std::string::npos ? "?" : "&") + "connect_timeout=" + std::to_string(secs);
  return url + " connect_timeout=" + std::to_string(secs);
}

Database::Database(DbOptions options, prometheus::Registry& registry) : options_(std::move(options)) {
  using namespace prometheus;
  size_gauge_ = &BuildGauge().Name("spillway_db_pool_size").Help("Connections the pool may hold")
                     .Register(registry).Add({});
  in_use_gauge_ = &BuildGauge().Name("spillway_db_pool_in_use").Help("Connections running a job now")
                       .Register(registry).Add({});
  open_gauge_ = &BuildGauge().Name("spillway_db_pool_open").Help("Connections currently open")
                     .Register(registry).Add({});
  queue_gauge_ = &BuildGauge().Name("spillway_db_pool_queue_depth").Help("Jobs waiting for a connection")
                      .Register(registry).Add({});
  wait_hist_ = &BuildHistogram().Name("spillway_db_pool_wait_seconds")
                    .Help("Time a job waited for a connection").Register(registry)
                    .Add({}, Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                         0.25, 0.5, 1, 2.5, 5});
  connect_failures_ = &BuildCounter().Name("spillway_db_connect_failures_total")
                           .Help("Failed attempts to open a database connection").Register(registry).Add({});
  auto& rejected = BuildCounter().Name("spillway_db_rejected_total")
                       .Help("Jobs refused with 503, by reason").Register(registry);
  rejected_busy_ = &rejected.Add({{"reason", "busy"}});
  rejected_unavailable_ = &rejected.Add({{"reason", "unavailable"}});
  size_gauge_->Set(options_.pool_size);
  for (int i = 0; i < options_.pool_size; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  for (int i = 0; i < options_.inline_connections; ++i) OpenInlineLater();
}

Database::~Database() { Stop(); }

DbOptions DbOptions::From(const Config& c) {
  DbOptions o;
  o.url = c.String("database.url");
  o.pool_size = static_cast<int>(c.Int("database.pool_size"));
  o.max_queue = static_cast<size_t>(c.Int("database.max_queue"));
  o.acquire_timeout = c.Duration("database.acquire_timeout");
  o.connect_timeout = c.Duration("database.connect_timeout");
  o.statement_timeout = c.Duration("database.statement_timeout");
  o.retry_after = c.Duration("database.retry_after");
  o.inline_connections = static_cast<int>(c.Int("database.inline_connections"));
  o.inline_statement_timeout = c.Duration("database.inline_statement_timeout");
  o.async_connections = static_cast<int>(c.Int("database.async_connections"));
  return o;
}

template <class Conn>
std::unique_ptr<Conn> Database::Take(Lent<Conn>& lent, void (Database::*open_later)()) {
  bool reopen = false;
  std::unique_ptr<Conn> conn;
  {
    std::lock_guard lk(inline_mu_);
    if (!lent.idle.empty()) {
      conn = std::move(lent.idle.back());
      lent.idle.pop_back();
    } else if (lent.missing > 0 && SteadyMs() - lent.last_attempt_ms > 1000) {
      --lent.missing;
      lent.last_attempt_ms = SteadyMs();
      reopen = true;
    }
  }
  if (reopen) (this->*open_later)();
  return conn;
}

template <class Conn>
void Database::Return(Lent<Conn>& lent, std::unique_ptr<Conn> conn, bool healthy) {
  std::lock_guard lk(inline_mu_);
  if (conn && healthy) {
    lent.idle.push_back(std::move(conn));
  } else {
    ++lent.missing;  // replaced on a later Take, by a worker
    open_gauge_->Decrement();
  }
}

template <class Conn, class Open>
void Database::OpenLater(Lent<Conn>& lent, Open open) {
  auto run = [this, &lent, open] {
    try {
      auto c = open();
      open_gauge_->Increment();
      std::lock_guard lk(inline_mu_);
      lent.idle.push_back(std::move(c));
    } catch (const std::exception& e) {
      std::lock_guard lk(inline_mu_);
      ++lent.missing;
    }
  };
  Submit(Job{[run](pqxx::connection&) { run(); },
             [this, &lent](const DbUnavailable&) {
               std::lock_guard lk(inline_mu_);
               ++lent.missing;
             }});
}

std::unique_ptr<pqxx::connection> Database::TakeInline() { return Take(inline_, &Database::OpenInlineLater); }

void Database::ReturnInline(std::unique_ptr<pqxx::connection> conn) {
  const bool healthy = conn && conn->is_open();
  Return(inline_, std::move(conn), healthy);
}

// An io thread's lent connection, blocking or not: its statements are cut off sooner than a worker's.
SessionOptions Database::LentSession() const {
  return {options_.url, "spillway-apiserver", options_.connect_timeout, options_.inline_statement_timeout};
}

void Database::OpenInlineLater() {
  OpenLater(inline_, [this] { return OpenSession(LentSession()); });
}

void Database::EnableAsync(std::vector<const Statement*> statements) {
  if (statements.empty()) return;
  {
    std::lock_guard lk(inline_mu_);
    async_statements_ = std::move(statements);
  }
  for (int i = 0; i < options_.async_connections; ++i) OpenAsyncLater();
}

std::unique_ptr<PgAsyncConnection> Database::TakeAsync() { return Take(async_, &Database::OpenAsyncLater); }

void Database::ReturnAsync(std::unique_ptr<PgAsyncConnection> conn) {
  const bool healthy = conn && conn->healthy();
  Return(async_, std::move(conn), healthy);
}

void Database::OpenAsyncLater() {
  OpenLater(async_, [this] {
    std::vector<const Statement*> statements;
    {
      std::lock_guard lk(inline_mu_);
      statements = async_statements_;
    }
    return PgAsyncConnection::Open(LentSession(), statements);
  });
}

void Database::Stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  std::lock_guard lk(inline_mu_);
  inline_.idle.clear();
  async_.idle.clear();
}

DbUnavailable Database::Unavailable(bool busy, const std::string& message) const {
  return DbUnavailable(busy, message, options_.retry_after);
}

void Database::Submit(Job job) {
  bool queued = false;
  {
    std::lock_guard lk(mu_);
    if (!stopping_ && queue_.size() < options_.max_queue) {
      queue_.push_back({std::move(job), std::chrono::steady_clock::now()});
      queue_gauge_->Set(static_cast<double>(queue_.size()));
      queued = true;
    }
  }
  if (queued) {
    cv_.notify_one();  // after unlocking, so the woken worker does not block on the mutex at once
    return;
  }
  rejected_busy_->Increment();
  job.reject(Unavailable(true, "too many requests are waiting for the database; retry shortly"));
}

std::unique_ptr<pqxx::connection> Database::Connect() {
  return OpenSession({options_.url, "spillway-apiserver", options_.connect_timeout, options_.statement_timeout});
}

void Database::WorkerLoop() {
  std::unique_ptr<pqxx::connection> conn;
  for (;;) {
    Queued item;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping and drained
      item = std::move(queue_.front());
      queue_.pop_front();
      queue_gauge_->Set(static_cast<double>(queue_.size()));
    }
    const auto waited = std::chrono::steady_clock::now() - item.enqueued;
    wait_hist_->Observe(std::chrono::duration<double>(waited).count());
    if (waited > options_.acquire_timeout) {
      rejected_busy_->Increment();
      item.job.reject(Unavailable(true, "no database connection became free in time; retry shortly"));
      continue;
    }
    if (conn && !conn->is_open()) {
      conn.reset();
      open_gauge_->Decrement();
    }
    if (!conn) {
      // While the database is down, do not let every job pay a connect attempt.
      if (SteadyMs() - last_connect_failure_ms_.load() < 250) {
        rejected_unavailable_->Increment();
        item.job.reject(Unavailable(false, "the database is unavailable; retry shortly"));
        continue;
      }
      try {
        conn = Connect();
        open_gauge_->Increment();
      } catch (const std::exception& e) {
        conn.reset();
        last_connect_failure_ms_ = SteadyMs();
        connect_failures_->Increment();
        rejected_unavailable_->Increment();
        log::Warn("database connect failed", {{"error", e.what()}});
        item.job.reject(Unavailable(false, "the database is unavailable; retry shortly"));
        continue;
      }
    }
    in_use_gauge_->Increment();
    try {
      item.job.run(*conn);
    } catch (const std::exception& e) {
      log::Error("database job escaped with an exception", {{"error", e.what()}});
    }
    in_use_gauge_->Decrement();
    if (!conn->is_open()) {
      conn.reset();
      open_gauge_->Decrement();
    }
  }
  if (conn) open_gauge_->Decrement();
}

}  // namespace spillway
