// Correct under concurrency and outages, with real processes: the quota holds under concurrent
// creates across replicas, an idempotency key survives the crash of the request that held it,
// terminate/heartbeat/create/preempt/reprice hammered together deadlock never and answer 500 never,
// and an outage of the apiservers or of PostgreSQL fails no instance while a dead agent's do fail.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

const std::string kOneGpu = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})";

// One count; values go in as parameters ($1, $2), never into the SQL text.
template <class... Args>
std::int64_t Count(const std::string& dsn, const std::string& sql, const Args&... args) {
  pqxx::connection c(dsn);
  const pqxx::row r = pqxx::nontransaction(c).exec_params1(sql, args...);
  return r[0].as<std::int64_t>();
}

std::map<std::string, std::string> ReliabilityEnv() {
  auto env = FastFleetEnv();
  env["SPILLWAY_DATABASE_POOL_SIZE"] = "8";
  // These tests load the pool and the locks from a few keys as fast as they go; a rate limit would
  // refuse that load before it got there (rate limits have tests of their own: rate_limit_test.cpp).
  env["SPILLWAY_RATELIMIT_ENABLED"] = "false";
  return env;
}

}  // namespace

TEST(Reliability, TheQuotaHoldsUnderConcurrentCreatesAcrossReplicas) {
  TestDb db;
  ApiServer a(db.dsn(), ReliabilityEnv()), b(db.dsn(), ReliabilityEnv());
  ASSERT_TRUE(a.WaitReady()) << a.process().Stderr();
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  Fleet fleet(db, a);
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 6, 8);  // 48 GPUs: capacity is never the limit
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 48; }, 20s));
  for (const auto& [quota, tries] : std::vector<std::pair<int, int>>{{2, 10}, {4, 20}, {1, 16}}) {
    const std::string tenant = fleet.NewTenant("quota-" + std::to_string(quota), quota);
    const std::string key = fleet.NewKey(tenant, "member");
    std::atomic<int> created{0}, refused{0}, other{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < tries; ++i)
      clients.emplace_back([&, i] {
        const auto r = Http(i % 2 ? a.port() : b.port(), "POST", "/v1/instances", key, kOneGpu);
        if (r.status == 201) ++created;
        else if (r.status == 409 && r.body.find("quota_exceeded") != std::string::npos) ++refused;
        else ++other;
      });
    for (auto& t : clients) t.join();
    EXPECT_EQ(created, quota) << "quota " << quota;
    EXPECT_EQ(refused, tries - quota);
    EXPECT_EQ(other, 0);
    EXPECT_EQ(Count(db.dsn(), "SELECT COALESCE(sum(gpus), 0) FROM instances WHERE tenant_id = $1", tenant), quota);
  }
}

TEST(Reliability, AnIdempotencyKeySurvivesTheCrashOfItsRequest) {
  TestDb db;
  auto env = ReliabilityEnv();
  auto a = std::make_unique<ApiServer>(db.dsn(), env);
  ApiServer b(db.dsn(), env);
  ASSERT_TRUE(a->WaitReady()) << a->process().Stderr();
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  Fleet fleet(db, b);
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  const std::string tenant = fleet.NewTenant("crash", 8);
  const std::string key = fleet.NewKey(tenant, "member");

  // Hold the create inside its transaction: the test locks the tenant row the quota check locks.
  pqxx::connection holder(db.dsn());
  pqxx::work lock(holder);
  lock.exec_params("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", tenant);
  const int a_port = a->port();
  auto first = std::async(std::launch::async, [&] {
    return Http(a_port, "POST", "/v1/instances", key, kOneGpu, {{"Idempotency-Key", "crash-1"}});
  });
  ASSERT_TRUE(WaitFor([&] {
    return Count(db.dsn(), "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND application_name = 'spillway-apiserver' AND wait_event_type = 'Lock'") > 0;
  }, 10s));
  // While it is in flight, the key is taken.
  const auto racing = Http(b.port(), "POST", "/v1/instances", key, kOneGpu, {{"Idempotency-Key", "crash-1"}});
  EXPECT_EQ(racing.status, 409) << racing.body;
  a->process().Stop(SIGKILL);
  first.wait();
  lock.commit();

  // The key dies with the request: a retry proceeds (once PostgreSQL has seen the client gone,
  // client_connection_check_interval: about a second), and exactly one instance results.
  HttpResponse retry;
  EXPECT_TRUE(WaitFor([&] {
    retry = Http(b.port(), "POST", "/v1/instances", key, kOneGpu, {{"Idempotency-Key", "crash-1"}});
    return retry.status != 409;
  }, 20s)) << retry.body;
  EXPECT_EQ(retry.status, 201) << retry.body;
  // The same request in another member order is the same request.
  const auto again = Http(b.port(), "POST", "/v1/instances", key,
                          R"({ "market":"on_demand", "region":"us-east", "instance_type":"h100.1x" })",
                          {{"Idempotency-Key", "crash-1"}});
  EXPECT_EQ(again.status, 201) << again.body;
  EXPECT_EQ(again.Header("idempotent-replayed"), "true");
  EXPECT_EQ(Str(Json(again), "id"), Str(Json(retry), "id"));
  EXPECT_EQ(Count(db.dsn(), "SELECT count(*) FROM instances WHERE tenant_id = $1", tenant), 1);
}

TEST(Reliability, HammeringTerminateHeartbeatCreatePreemptAndRepriceDeadlocksNever) {
  TestDb db;
  auto env = ReliabilityEnv();
  env["SPILLWAY_AGENT_HEARTBEAT_INTERVAL"] = "100ms";
  env["SPILLWAY_SPOT_REPRICE_INTERVAL"] = "200ms";
  env["SPILLWAY_CONTROLLERS_TICK"] = "100ms";
  ApiServer a(db.dsn(), env), b(db.dsn(), env);
  ASSERT_TRUE(a.WaitReady()) << a.process().Stderr();
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  Fleet fleet(db, a);
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 4, 8, {"--boot-delay", "0ms"});
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 32; }, 20s));
  std::vector<std::string> keys;
  for (int t = 0; t < 4; ++t) keys.push_back(fleet.NewKey(fleet.NewTenant("hammer-" + std::to_string(t), 1000), "member"));
  const auto deadlocks_before =
      Count(db.dsn(), "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()");

  std::atomic<int> server_errors{0}, answers{0};
  std::mutex mu;
  std::vector<std::string> errors;
  auto note = [&](const HttpResponse& r) {
    ++answers;
    if (r.status >= 500) {
      ++server_errors;
      std::lock_guard lk(mu);
      errors.push_back(std::to_string(r.status) + " " + r.body);
    }
  };
  std::vector<std::thread> workers;
  for (int w = 0; w < 6; ++w)
    workers.emplace_back([&, w] {
      const std::string& key = keys[w % keys.size()];
      const int port = w % 2 ? a.port() : b.port();
      for (int i = 0; i < 80; ++i) {
        const bool spot = (i + w) % 2 == 0;
        const auto c = Http(port, "POST", "/v1/instances", key,
                            spot ? R"({"instance_type":"h100.1x","region":"us-east","market":"spot"})" : kOneGpu);
        note(c);
        if (c.status == 201 && i % 3 != 0) note(Http(port, "DELETE", "/v1/instances/" + Str(Json(c), "id"), key));
      }
    });
  workers.emplace_back([&] {  // internal demand moving up and down preempts spot and reprices
    for (int i = 0; i < 80; ++i)
      note(Http(i % 2 ? a.port() : b.port(), "PUT", "/v1/capacity/pools/us-east/H100-80GB", fleet.operator_key,
                "{\"internal_reserved_gpus\":" + std::to_string((i * 7) % 12) + "}"));
  });
  for (auto& t : workers) t.join();
  EXPECT_GT(answers, 500);
  EXPECT_EQ(server_errors, 0);
  for (const auto& e : errors) ADD_FAILURE() << e;
  EXPECT_EQ(Count(db.dsn(), "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"),
            deadlocks_before);
  EXPECT_EQ(Count(db.dsn(), "SELECT count(*) FROM (SELECT host_id, gpu_index FROM gpu_allocation_history "
                            "WHERE released_at IS NULL GROUP BY 1, 2 HAVING count(*) > 1) d"), 0);
  EXPECT_EQ(Count(db.dsn(), "SELECT count(*) FROM gpu_allocation_history WHERE released_at IS NULL"),
            Count(db.dsn(), "SELECT count(*) FROM gpu_allocations"));
}

namespace {

// Two running on-demand instances of 8 GPUs on a 2-host fleet.
struct RunningFleet {
  std::string member;
  std::vector<std::string> instances;
};

RunningFleet LaunchTwo(Fleet& fleet) {
  RunningFleet f;
  f.member = fleet.NewKey(fleet.NewTenant("outage", 64), "member");
  for (int i = 0; i < 2; ++i) {
    const auto r = fleet.Call("POST", "/v1/instances", f.member,
                              R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");
    EXPECT_EQ(r.status, 201) << r.body;
    f.instances.push_back(Str(Json(r), "id"));
  }
  for (const auto& id : f.instances) EXPECT_TRUE(fleet.WaitState(f.member, id, "running"));
  return f;
}

void ExpectAllRunning(Fleet& fleet, const RunningFleet& f, const char* when) {
  for (const auto& id : f.instances) {
    const auto i = fleet.Instance(f.member, id);
    EXPECT_EQ(Str(i, "state"), "running") << when << ": " << boost::json::serialize(i);
  }
}

}  // namespace

TEST(Reliability, AnApiserverOutageLongerThanTheTimeoutFailsNoInstance) {
  TestDb db;
  ApiServer server(db.dsn(), ReliabilityEnv());  // heartbeat timeout 3s, report grace 5s
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(db, server);
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 2, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 16; }, 20s));
  const auto f = LaunchTwo(fleet);

  server.process().Stop(SIGKILL);  // every apiserver down; the agents keep retrying
  std::this_thread::sleep_for(7s);
  server.Restart();
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  // Longer than the heartbeat timeout and the report grace, counted from the recovery.
  std::this_thread::sleep_for(7s);
  ExpectAllRunning(fleet, f, "after the apiserver outage");
  EXPECT_EQ(Count(db.dsn(), "SELECT count(*) FROM hosts WHERE health = 'down'"), 0);

  // A dead agent is still found out: its hosts go down and their instances fail.
  agent->Stop(SIGKILL);
  for (const auto& id : f.instances) EXPECT_TRUE(fleet.WaitState(f.member, id, "failed"));
  EXPECT_EQ(Str(fleet.Instance(f.member, f.instances[0]), "end_reason"), "host_down");
}

TEST(Reliability, APostgresOutageLongerThanTheTimeoutFailsNoInstance) {
  OwnCluster pg;
  ASSERT_TRUE(pg.ok());
  ASSERT_TRUE(pg.Migrate());
  auto env = ReliabilityEnv();
  env["SPILLWAY_DATABASE_CONNECT_TIMEOUT"] = "1s";
  env["SPILLWAY_DATABASE_ACQUIRE_TIMEOUT"] = "1s";
  ApiServer server(pg.dsn(), env);
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(pg.dsn(), server);
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 2, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 16; }, 20s));
  const auto f = LaunchTwo(fleet);

  ASSERT_TRUE(pg.Stop());
  std::this_thread::sleep_for(7s);
  ASSERT_TRUE(pg.Start());
  ASSERT_TRUE(WaitFor([&] { return Http(server.admin_port(), "GET", "/readyz").status == 200; }, 30s));
  std::this_thread::sleep_for(7s);
  ExpectAllRunning(fleet, f, "after the PostgreSQL outage");
  EXPECT_EQ(Count(pg.dsn(), "SELECT count(*) FROM hosts WHERE health = 'down'"), 0);
}

TEST(Reliability, ManyHostsOfARegionFallingSilentTogetherAreMarkedDownButKeepTheirInstances) {
  TestDb db;
  ApiServer server(db.dsn(), ReliabilityEnv());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(db, server);
  auto many = fleet.StartAgent("us-east", "H100-80GB", 3, 8);
  auto one = fleet.StartAgent("us-east", "H100-80GB", 1, 8, {"--hostname", "lone-" + std::to_string(::getpid())});
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 32; }, 20s));
  RunningFleet f;
  f.member = fleet.NewKey(fleet.NewTenant("brake", 64), "member");
  for (int i = 0; i < 4; ++i) {
    const auto r = fleet.Call("POST", "/v1/instances", f.member,
                              R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");
    ASSERT_EQ(r.status, 201) << r.body;
    f.instances.push_back(Str(Json(r), "id"));
  }
  for (const auto& id : f.instances) ASSERT_TRUE(fleet.WaitState(f.member, id, "running"));

  many->Stop(SIGKILL);  // 3 of the region's 4 hosts fall silent together
  ASSERT_TRUE(WaitFor([&] {
    return Count(db.dsn(), "SELECT count(*) FROM hosts WHERE health = 'down' AND down_reason = 'mass_silence'") == 3;
  }, 20s)) << server.process().Stderr();
  std::this_thread::sleep_for(7s);  // past the report grace too
  ExpectAllRunning(fleet, f, "after the region fell silent");
  const auto metrics = Http(server.admin_port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find("spillway_hosts_marked_down_total{reason=\"mass_silence\"} 3"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("spillway_fleet_silence_brake{region=\"us-east\"} 3"), std::string::npos);
}

TEST(Reliability, AnAgentRestartIsNotAnInstanceRestart) {
  TestDb db;
  ApiServer server(db.dsn(), ReliabilityEnv());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(db, server);
  const std::string out = fleet.state_dir + "/out";
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  const std::vector<std::string> exec = {"--runtime", "exec", "--stop-grace", "2s", "--launcher",
                                         "echo $$ >> " + out + "/$SPILLWAY_INSTANCE_ID.pid; exec sleep 600"};
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 1, 8, exec);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  const std::string member = fleet.NewKey(fleet.NewTenant("restart", 8), "member");
  const auto created = fleet.Call("POST", "/v1/instances", member, kOneGpu);
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string id = Str(Json(created), "id");
  ASSERT_TRUE(fleet.WaitState(member, id, "running"));
  auto pids = [&] {
    std::ifstream f(out + "/" + id + ".pid");
    std::vector<int> v;
    for (int p; f >> p;) v.push_back(p);
    return v;
  };
  ASSERT_TRUE(WaitFor([&] { return pids().size() == 1; }, 10s));
  const int pid = pids()[0];

  EXPECT_EQ(agent->Stop(SIGTERM), 0);  // an upgrade, say
  EXPECT_EQ(::kill(pid, 0), 0) << "the instance's process died with its agent";
  agent = fleet.StartAgent("us-east", "H100-80GB", 1, 8, exec);
  std::this_thread::sleep_for(7s);  // past the heartbeat timeout and the report grace
  EXPECT_EQ(Str(fleet.Instance(member, id), "state"), "running");
  EXPECT_EQ(::kill(pid, 0), 0);
  EXPECT_EQ(pids(), std::vector<int>{pid}) << "the launcher was started again";

  // Stopping it is still the assignments' word, and reaches the adopted process.
  EXPECT_EQ(fleet.Call("DELETE", "/v1/instances/" + id, member).status, 200);
  EXPECT_TRUE(fleet.WaitState(member, id, "terminated")) << agent->Stderr() << "\nSERVER\n" << server.process().Stderr();
  EXPECT_TRUE(WaitFor([&] { return ::kill(pid, 0) != 0; }, 10s));

  // Decommissioning: --drain-on-exit stops the instances before the agent exits.
  agent->Stop(SIGKILL);
  auto exec_drain = exec;
  exec_drain.push_back("--drain-on-exit");
  agent = fleet.StartAgent("us-east", "H100-80GB", 1, 8, exec_drain);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  const auto second = fleet.Call("POST", "/v1/instances", member, kOneGpu);
  ASSERT_EQ(second.status, 201) << second.body;
  const std::string id2 = Str(Json(second), "id");
  ASSERT_TRUE(fleet.WaitState(member, id2, "running"));
  int pid2 = 0;
  ASSERT_TRUE(WaitFor([&] {
    std::ifstream f(out + "/" + id2 + ".pid");
    return bool(f >> pid2);
  }, 10s));
  EXPECT_EQ(agent->Stop(SIGTERM), 0) << agent->Stderr();
  EXPECT_NE(::kill(pid2, 0), 0) << "a drained host left its instance running";
}

TEST(Reliability, ASaturatedRequestPoolMarksNoHostDown) {
  TestDb db;
  auto env = ReliabilityEnv();  // heartbeats every 500ms, timeout 3s
  env["SPILLWAY_DATABASE_POOL_SIZE"] = "2";
  env["SPILLWAY_DATABASE_MAX_QUEUE"] = "4";
  env["SPILLWAY_DATABASE_ACQUIRE_TIMEOUT"] = "500ms";
  ApiServer server(db.dsn(), env);
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(db, server);
  const std::string tenant = fleet.NewTenant("flood", 1000);
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 20, 8);
  // (Read from the database: with so small a pool, the agents' own start keeps the API busy.)
  ASSERT_TRUE(WaitFor([&] { return Count(db.dsn(), "SELECT count(*) FROM hosts WHERE health = 'up'") == 20; }, 30s));
  const std::string key = fleet.NewKey(tenant, "member");
  // Every host has heartbeated in full once, so its next heartbeats can take the fast path.
  ASSERT_TRUE(WaitFor([&] {
    return Http(server.admin_port(), "GET", "/metrics").body.find("spillway_heartbeats_recorded_total 0") ==
           std::string::npos;
  }, 10s));

  // Saturate the pool for longer than the heartbeat timeout: creates that wait on a lock the test
  // holds keep every connection busy, and the queue behind them full.
  pqxx::connection holder(db.dsn());
  pqxx::work lock(holder);
  lock.exec_params("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", tenant);
  std::atomic<bool> stop{false};
  std::atomic<int> refused{0};
  std::vector<std::thread> flood;
  for (int i = 0; i < 12; ++i)
    flood.emplace_back([&] {
      while (!stop) {
        const auto r = Http(server.port(), "POST", "/v1/instances", key, kOneGpu);
        if (r.status == 503) ++refused;
      }
    });
  std::this_thread::sleep_for(7s);
  EXPECT_GT(refused, 0) << "the pool was never saturated";
  EXPECT_EQ(Count(db.dsn(), "SELECT count(*) FROM hosts WHERE health = 'down'"), 0)
      << "hosts were marked down while the control plane could not hear them";
  lock.abort();
  stop = true;
  for (auto& t : flood) t.join();
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(Count(db.dsn(), "SELECT count(*) FROM hosts WHERE health = 'down'"), 0);
  // Heartbeats were heard throughout: every host's last one is recent.
  EXPECT_EQ(Count(db.dsn(), "SELECT count(*) FROM hosts WHERE last_heartbeat < now() - interval '3 seconds'"), 0);
}
