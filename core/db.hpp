#pragma once
#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/config.hpp"
#include "core/duration.hpp"

namespace prometheus {
class Registry;
class Gauge;
class Counter;
class Histogram;
}  // namespace prometheus

namespace spillway {

struct DbUnavailable;
class PgAsyncConnection;

// A named, parameterised query, declared on every pooled connection and prepared there on first use.
// Declare these as namespace-scope constants beside the code that runs them. A few are run planned on
// each call instead (exec_params with .sql), where a plan cached while a table was small or empty
// would be kept after it grew (their comments say so).
class Statement {
 public:
  Statement(const char* name, const char* sql);
  const char* name;
  const char* sql;
};
// Declares every Statement on `conn` (pqxx prepares each lazily, on first use).
void PrepareAll(pqxx::connection_base& conn);
// True for errors that mean "the database is not there right now" rather than "the query is wrong".
bool IsUnavailable(const std::exception& e);
// Adds connect_timeout to a libpq URL or key=value connection string.
std::string WithConnectTimeout(const std::string& url, Millis timeout);

// How every Spillway session is opened (the pool, the leader, the notifier, the subcommands): UTC,
// statement_timeout, application_name naming its role ("spillway-apiserver", "spillway-leader",
// "spillway-notifier", "spillway-migrate"), client_connection_check_interval (so a backend whose
// client died, even while it waits on a lock, ends and releases what it holds), and every Statement
// prepared.
struct SessionOptions {
  std::string url;
  std::string application_name;
  Millis connect_timeout{3000};
  Millis statement_timeout{30000};  // 0: none
};
std::unique_ptr<pqxx::connection> OpenSession(const SessionOptions& options);
// The statement that gives a new connection those settings (UTC, $1 application_name, $2
// statement_timeout in ms, a dead client noticed within a second): OpenSession's and
// PgAsyncConnection::Open's alike.
extern const char* const kSessionSetupSql;

// True for SQLSTATE class 40 (deadlock detected, serialization failure): the transaction lost a
// race and may simply run again.
bool IsRetryable(const std::exception& e);

// Sleeps a short random while, longer for later attempts (see InTransaction).
void PauseBeforeRetry(int attempt);

// Runs fn(tx) in a transaction and commits it. A transaction that lost a race (IsRetryable) is
// rolled back and run again, at most `attempts` times in all, after a short random pause: a lost
// race is retried, never answered 500. fn must therefore have no effects outside the transaction.
template <class Fn>
auto InTransaction(pqxx::connection_base& conn, Fn&& fn, int attempts = 5) {
  for (int attempt = 1;; ++attempt) {
    try {
      pqxx::work tx(conn);
      if constexpr (std::is_void_v<decltype(fn(tx))>) {
        fn(tx);
        tx.commit();
        return;
      } else {
        auto result = fn(tx);
        tx.commit();
        return result;
      }
    } catch (const std::exception& e) {
      if (attempt >= attempts || !IsRetryable(e)) throw;
      PauseBeforeRetry(attempt);
    }
  }
}

// Single statements each seeing what is committed (reads, the auth lookup): no transaction.
using Autocommit = pqxx::nontransaction;
// Reports read several statements; a repeatable-read transaction gives them one snapshot, so a host
// registering meanwhile is in all of them or in none.
using Snapshot = pqxx::transaction<pqxx::isolation_level::repeatable_read, pqxx::readwrite_policy::read_only>;

struct DbOptions {
  std::string url;
  int pool_size = 8;
  size_t max_queue = 1024;
  Millis acquire_timeout{2000};
  Millis connect_timeout{3000};
  Millis statement_timeout{30000};
  Millis retry_after{1000};
  int inline_connections = 0;          // lent to io threads for short reads (see TakeInline)
  int async_connections = 0;           // non-blocking ones for the io threads' reads (see TakeAsync)
  Millis inline_statement_timeout{2000};
  static DbOptions From(const Config& config);  // the [database] section, read once at start
  // A session of its own (leader, notifier, heartbeat writer, ingest) with these settings.
  SessionOptions Session(std::string application_name) const {
    return {url, std::move(application_name), connect_timeout, statement_timeout};
  }
};

// A bounded pool of worker threads, each owning one libpqxx connection: libpqxx blocks, so io
// threads hand it work here and never wait on PostgreSQL. A job that cannot get a connection
// within acquire_timeout (queue too long, database down) is rejected with DbUnavailable.
// Broken connections are dropped and reopened on the next job.
class Database {
 public:
  struct Job {
    std::function<void(pqxx::connection&)> run;   // handles its own errors
    std::function<void(const DbUnavailable&)> reject;  // called instead of run
  };

  Database(DbOptions options, prometheus::Registry& registry);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  void Submit(Job job);
  void Stop();  // finishes queued jobs' rejection, joins workers

  // Connections lent to io threads for short reads, so a read costs no wake-up of a worker and
  // back: taken and returned under an uncontended mutex. nullptr when none is idle (then use
  // Submit). They are opened, and replaced when one breaks, by the workers, never on an io thread.
  std::unique_ptr<pqxx::connection> TakeInline();
  void ReturnInline(std::unique_ptr<pqxx::connection> conn);

  // Non-blocking connections (core/pg_async) for the reads an io thread answers without waiting on
  // PostgreSQL: async_connections of them, each with `statements` prepared, opened (and replaced
  // when one breaks) by the workers. Call once, at start. TakeAsync: nullptr when none is idle.
  void EnableAsync(std::vector<const Statement*> statements);
  std::unique_ptr<PgAsyncConnection> TakeAsync();
  void ReturnAsync(std::unique_ptr<PgAsyncConnection> conn);

 private:
  struct Queued {
    Job job;
    std::chrono::steady_clock::time_point enqueued;
  };
  void WorkerLoop();
  std::unique_ptr<pqxx::connection> Connect();
  // Connections lent to io threads (blocking inline ones and non-blocking ones), under inline_mu_:
  // the idle ones, and how many are owed (broke, or never opened), reopened by a worker at most
  // once a second.
  template <class Conn>
  struct Lent {
    std::vector<std::unique_ptr<Conn>> idle;
    int missing = 0;
    std::int64_t last_attempt_ms = 0;
  };
  template <class Conn>
  std::unique_ptr<Conn> Take(Lent<Conn>& lent, void (Database::*open_later)());
  template <class Conn>
  void Return(Lent<Conn>& lent, std::unique_ptr<Conn> conn, bool healthy);
  template <class Conn, class Open>
  void OpenLater(Lent<Conn>& lent, Open open);  // a worker opens one more (when the database answers)
  void OpenInlineLater();
  void OpenAsyncLater();
  SessionOptions LentSession() const;
  std::mutex inline_mu_;
  Lent<pqxx::connection> inline_;
  Lent<PgAsyncConnection> async_;
  std::vector<const Statement*> async_statements_;
  DbUnavailable Unavailable(bool busy, const std::string& message) const;

  DbOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  std::atomic<std::int64_t> last_connect_failure_ms_{0};

  prometheus::Gauge* size_gauge_;
  prometheus::Gauge* in_use_gauge_;
  prometheus::Gauge* open_gauge_;
  prometheus::Gauge* queue_gauge_;
  prometheus::Histogram* wait_hist_;
  prometheus::Counter* connect_failures_;
  prometheus::Counter* rejected_busy_;
  prometheus::Counter* rejected_unavailable_;
};

}  // namespace spillway
