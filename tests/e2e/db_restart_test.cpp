// PostgreSQL restarts under load: the server answers 503 with Retry-After meanwhile, /readyz says
// so, and it recovers by itself once the database is back. The test runs a cluster of its own so
// that stopping it disturbs no other test.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "tests/support/test_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;


TEST(DatabaseRestart, ServerAnswers503MeanwhileAndRecoversByItself) {
  OwnCluster pg;
  ASSERT_TRUE(pg.ok());
  std::string out;
  ASSERT_EQ(RunCommand({ApiServerBinary(), "migrate"}, {{"SPILLWAY_DATABASE_URL", pg.dsn()}}, &out), 0) << out;
  // Four threads on one key as fast as they go: that is load for the pool here, not a tenant to limit.
  ApiServer server(pg.dsn(), {{"SPILLWAY_DATABASE_CONNECT_TIMEOUT", "1s"},
                              {"SPILLWAY_DATABASE_ACQUIRE_TIMEOUT", "1s"},
                              {"SPILLWAY_RATELIMIT_ENABLED", "false"}});
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(pg.dsn());
  const auto created = Http(server.port(), "POST", "/v1/tenants", admin, R"({"name":"restart"})");
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string path = "/v1/tenants/" + std::string(boost::json::parse(created.body).at("id").as_string());

  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<int, int> statuses;
  int missing_retry_after = 0;
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t)
    load.emplace_back([&] {
      HttpConn conn(server.port());
      while (!stop) {
        auto r = conn.Call("GET", path, admin);
        if (r.status == 0) {  // connection closed: open another
          conn.~HttpConn();
          new (&conn) HttpConn(server.port());
          continue;
        }
        std::lock_guard lk(mu);
        ++statuses[r.status];
        if (r.status == 503 && r.Header("retry-after").empty()) ++missing_retry_after;
        if (r.status == 503) std::this_thread::sleep_for(20ms);
      }
    });
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(pg.Stop());
  std::this_thread::sleep_for(1s);
  const auto down = Http(server.port(), "GET", path, admin);
  EXPECT_EQ(down.status, 503) << down.body;
  EXPECT_FALSE(down.Header("retry-after").empty());
  EXPECT_EQ(Http(server.admin_port(), "GET", "/readyz").status, 503);
  EXPECT_EQ(Http(server.admin_port(), "GET", "/healthz").status, 200);  // alive, just not ready

  ASSERT_TRUE(pg.Start());
  const auto back = std::chrono::steady_clock::now();
  bool recovered = false;
  while (!recovered && std::chrono::steady_clock::now() - back < 30s) {
    recovered = Http(server.port(), "GET", path, admin).status == 200 &&
                Http(server.admin_port(), "GET", "/readyz").status == 200;
    if (!recovered) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(recovered) << server.process().Stderr();
  {
    std::lock_guard lk(mu);
    statuses.clear();
  }
  std::this_thread::sleep_for(500ms);
  stop = true;
  for (auto& t : load) t.join();
  // Once recovered, every request under load succeeds again.
  EXPECT_GT(statuses[200], 0);
  for (const auto& [status, n] : statuses) EXPECT_EQ(status, 200) << n << " responses were " << status;
  EXPECT_EQ(missing_retry_after, 0);
  EXPECT_TRUE(server.process().Running());
}
