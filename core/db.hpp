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
#include <vector>

#include "core/duration.hpp"

namespace prometheus {
class Registry;
class Gauge;
class Counter;
class Histogram;
}  // namespace prometheus

namespace spillway {

struct ApiError;

// A named, parameterised query, prepared once on every pooled connection. Declare these as
// namespace-scope constants beside the code that runs them.
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

struct DbOptions {
  std::string url;
  int pool_size = 8;
  size_t max_queue = 1024;
  Millis acquire_timeout{2000};
  Millis connect_timeout{3000};
  Millis statement_timeout{30000};
  Millis retry_after{1000};
};

// A bounded pool of worker threads, each owning one libpqxx connection: libpqxx blocks, so io
// threads hand it work here and never wait on PostgreSQL. A job that cannot get a connection
// within acquire_timeout (queue too long, database down) is rejected with a 503 ApiError.
// Broken connections are dropped and reopened on the next job.
class Database {
 public:
  struct Job {
    std::function<void(pqxx::connection&)> run;   // handles its own errors
    std::function<void(const ApiError&)> reject;  // called instead of run
  };

  Database(DbOptions options, prometheus::Registry& registry);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  void Submit(Job job);
  void Stop();  // finishes queued jobs' rejection, joins workers

 private:
  struct Queued {
    Job job;
    std::chrono::steady_clock::time_point enqueued;
  };
  void WorkerLoop();
  std::unique_ptr<pqxx::connection> Connect();
  ApiError Unavailable(const std::string& code, const std::string& message) const;

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
