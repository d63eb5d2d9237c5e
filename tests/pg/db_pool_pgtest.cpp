#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <future>

#include "apiserver/errors.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using spillway::test::TestDb;

namespace {
struct Outcome {
  bool ran = false;
  int status = 0;
  std::string code, retry_after;
};

std::future<Outcome> Submit(Database& db, std::function<void(pqxx::connection&)> work = nullptr) {
  auto p = std::make_shared<std::promise<Outcome>>();
  auto f = p->get_future();
  db.Submit(Database::Job{[p, work](pqxx::connection& c) {
                            if (work) work(c);
                            p->set_value({true, 200, "", ""});
                          },
                          [p](const DbUnavailable& e) {
                            // The pool says why; the API's one error mapping turns it into the answer.
                            const auto r = ErrorResponseFor(e, "req_test");
                            std::string retry_after;
                            for (const auto& [k, v] : r.headers)
                              if (k == "Retry-After") retry_after = v;
                            p->set_value({false, r.status, e.code(), retry_after});
                          }});
  return f;
}
}  // namespace

TEST(DatabasePool, RunsJobsOnPooledConnections) {
  TestDb db;
  prometheus::Registry reg;
  Database pool(DbOptions{db.dsn(), 2}, reg);
  std::vector<std::future<Outcome>> fs;
  std::atomic<int> sum{0};
  for (int i = 0; i < 20; ++i)
    fs.push_back(Submit(pool, [&](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      sum += tx.exec1("SELECT 1")[0].as<int>();
    }));
  for (auto& f : fs) EXPECT_TRUE(f.get().ran);
  EXPECT_EQ(sum, 20);
}

TEST(DatabasePool, UnreachableDatabaseIs503WithRetryAfter) {
  prometheus::Registry reg;
  DbOptions o;
  o.url = "host=/nonexistent-spillway-socket-dir port=1 user=x dbname=x";
  o.pool_size = 1;
  Database pool(o, reg);
  const auto r = Submit(pool).get();
  EXPECT_FALSE(r.ran);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.code, "database_unavailable");
  EXPECT_EQ(r.retry_after, "1");
}

TEST(DatabasePool, FullQueueAndLongWaitAre503Busy) {
  TestDb db;
  prometheus::Registry reg;
  DbOptions o;
  o.url = db.dsn();
  o.pool_size = 1;
  o.max_queue = 1;
  o.acquire_timeout = std::chrono::milliseconds(200);
  Database pool(o, reg);
  std::promise<void> release;
  auto gate = release.get_future().share();
  auto blocker = Submit(pool, [gate](pqxx::connection&) { gate.wait(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the blocker holds the only worker
  auto queued = Submit(pool);   // waits in the queue past acquire_timeout
  auto refused = Submit(pool);  // the queue is full
  const auto r = refused.get();
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.code, "database_busy");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  release.set_value();
  EXPECT_TRUE(blocker.get().ran);
  const auto q = queued.get();
  EXPECT_FALSE(q.ran);
  EXPECT_EQ(q.code, "database_busy");
  EXPECT_TRUE(Submit(pool).get().ran);  // and the pool is fine afterwards
}

TEST(DatabasePool, BrokenConnectionIsReplaced) {
  TestDb db;
  prometheus::Registry reg;
  Database pool(DbOptions{db.dsn(), 1}, reg);
  int first_pid = 0, second_pid = 0;
  ASSERT_TRUE(Submit(pool, [&](pqxx::connection& c) {
                first_pid = pqxx::nontransaction(c).exec1("SELECT pg_backend_pid()")[0].as<int>();
              }).get().ran);
  {
    auto admin = db.Connect();
    pqxx::nontransaction(*admin).exec_params("SELECT pg_terminate_backend($1)", first_pid);
  }
  // The job that meets the dead connection fails; the next one gets a new connection.
  Submit(pool, [](pqxx::connection& c) {
    try {
      pqxx::nontransaction(c).exec("SELECT 1");
    } catch (const std::exception&) {
    }
  }).get();
  ASSERT_TRUE(Submit(pool, [&](pqxx::connection& c) {
                second_pid = pqxx::nontransaction(c).exec1("SELECT pg_backend_pid()")[0].as<int>();
              }).get().ran);
  EXPECT_NE(first_pid, second_pid);
  EXPECT_NE(second_pid, 0);
}
