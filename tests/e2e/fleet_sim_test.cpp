// spillway-fleet-sim against real apiservers: a storm of hosts registering at once converges with
// no host marked down and every sample acknowledged stored exactly once, launches reach their
// hosts; and with two replicas, hosts whose replica is killed move to the other without being
// marked down. (bench/fleet/run drives the same program at 1,000-10,000 hosts.)
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {
std::map<std::string, std::string> SimEnv() {
  auto env = FastFleetEnv();
  env["SPILLWAY_AGENT_SAMPLE_INTERVAL"] = "1s";
  return env;
}
}  // namespace

TEST(FleetSim, AStormOfHostsConvergesAndEverySampleIsStoredOnce) {
  TestDb db;
  ApiServer server(db.dsn(), SimEnv());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(db, server);
  const std::string member = fleet.NewKey(fleet.NewTenant("storm-customer", 64), "member");
  const std::string report = "/tmp/spw-fleet-sim-" + std::to_string(::getpid()) + ".json";
  std::string out;
  const int rc = RunCommand({FleetSimBinary(), "--api", "http://127.0.0.1:" + std::to_string(server.port()),
                             "--bootstrap-token", "test-bootstrap-token", "--hosts", "300", "--gpus-per-host", "2",
                             "--region", "storm", "--hostname-prefix", "storm", "--boot-delay", "200ms",
                             "--steady", "6s", "--converge-limit", "60s", "--tenant-key", member,
                             "--launch-rate", "2", "--launch-hold", "1s", "--pg-dsn", db.dsn(), "--report-json", report,
                             "--metrics", "http://127.0.0.1:" + std::to_string(server.admin_port())},
                            {}, &out);
  EXPECT_EQ(rc, 0) << out << server.process().Stderr();
  const auto j = boost::json::parse(ReadWhole(report));
  ::unlink(report.c_str());
  EXPECT_TRUE(j.at("converged").as_bool()) << out;
  EXPECT_EQ(j.at("hosts_down").as_int64(), 0) << out;
  // Not even for a moment: the server's own count, and what the simulator saw polling.
  EXPECT_EQ(j.at("hosts_marked_down").as_int64(), 0) << out;
  EXPECT_EQ(j.at("hosts_seen_down").as_int64(), 0) << out;
  EXPECT_EQ(j.at("instances_failed").as_int64(), 0) << out;
  EXPECT_GT(j.at("samples_stored").as_int64(), 300 * 2 * 4) << out;  // every GPU, every second
  EXPECT_EQ(j.at("samples_stored").as_int64(), j.at("samples_acknowledged").as_int64()) << out;
  EXPECT_GE(j.at("assignment_ms").at("count").as_int64(), 8) << out;  // launches seen by their hosts
  EXPECT_EQ(j.at("share_503_pct").to_number<double>(), 0.0) << out;
  // The control plane counts the same fleet.
  EXPECT_EQ(fleet.PoolInt("storm", "H100-80GB", "total_gpus"), 600);
}

TEST(FleetSim, HostsMoveToTheOtherReplicaWhenTheirsIsKilled) {
  TestDb db;
  auto env = SimEnv();
  env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "500ms";  // the leader's folds beside the committers, often
  ApiServer a(db.dsn(), env), b(db.dsn(), env);
  ASSERT_TRUE(a.WaitReady()) << a.process().Stderr();
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  Fleet fleet(db, a);
  // Half the hosts start on each replica.
  Process sim({FleetSimBinary(), "--api", "http://127.0.0.1:" + std::to_string(a.port()), "--api",
               "http://127.0.0.1:" + std::to_string(b.port()), "--bootstrap-token", "test-bootstrap-token",
               "--hosts", "100", "--gpus-per-host", "1", "--region", "pair", "--hostname-prefix", "pair",
               "--status-every", "1s"},
              {});
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("pair", "H100-80GB", "total_gpus") == 100; }, 30s)) << sim.Stderr();
  auto conn = db.Connect();
  auto value = [&](const std::string& sql) { return std::stoll(SqlValue(*conn, sql)); };
  // Samples stored through b so far, by the hosts that started on it (odd-numbered).
  ASSERT_TRUE(WaitFor([&] { return value("SELECT count(DISTINCT host_id) FROM host_watermarks") == 100; }, 20s));
  const auto before = value("SELECT count(*) FROM usage_samples");
  const std::string kDeadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()";
  const auto deadlocks_before = value(kDeadlocks);

  b.process().Stop(SIGKILL);
  // Well past fleet.heartbeat_timeout (3 s): nobody is marked down, and every host keeps reporting
  // (its heartbeats and samples now through a).
  std::this_thread::sleep_for(8s);
  EXPECT_EQ(value("SELECT count(*) FROM hosts WHERE health = 'down'"), 0) << sim.Stderr();
  EXPECT_EQ(value("SELECT count(*) FROM hosts WHERE last_heartbeat < now() - interval '3 seconds'"), 0);
  EXPECT_EQ(value("SELECT count(*) FROM host_watermarks WHERE sampled_through < now() - interval '4 seconds'"), 0);
  EXPECT_GT(value("SELECT count(*) FROM usage_samples"), before);
  // The survivor leads now: its first folds move every host's folded_through while its committers,
  // with twice the hosts, write their watermarks. Neither waits on the other in a cycle (the fold
  // skips rows ingest holds), so PostgreSQL found no deadlock.
  ASSERT_TRUE(WaitFor([&] {
    return value("SELECT count(*) FROM host_watermarks WHERE folded_through > now() - interval '3 seconds'") == 100;
  }, 20s)) << a.process().Stderr();
  EXPECT_EQ(value(kDeadlocks), deadlocks_before) << a.process().Stderr();
  EXPECT_EQ(a.process().Stderr().find("deadlock"), std::string::npos);
  EXPECT_EQ(sim.Stop(SIGTERM), 0) << sim.Stderr();
}

// With no replica leading (a session holds the leader's advisory lock, as a leader stuck on a bad
// connection would), hosts still register and come and go: the capacity changes they append are
// folded by every replica's heartbeat writer, so they stay few and the pool's count stays right.
TEST(FleetSim, PoolCapacityChangesStayFewWithNoLeader) {
  TestDb db;
  auto lock = db.Connect();
  pqxx::nontransaction(*lock).exec("SELECT pg_advisory_lock(7308324466018009602)");  // apiserver/serve.cpp kLeaderLock
  ApiServer server(db.dsn(), SimEnv());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(db, server);
  Process sim({FleetSimBinary(), "--api", "http://127.0.0.1:" + std::to_string(server.port()), "--bootstrap-token",
               "test-bootstrap-token", "--hosts", "120", "--gpus-per-host", "2", "--region", "leaderless",
               "--hostname-prefix", "leaderless", "--status-every", "1s"},
              {});
  auto conn = db.Connect();
  auto value = [&](const std::string& sql) { return std::stoll(SqlValue(*conn, sql)); };
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("leaderless", "H100-80GB", "total_gpus") == 240; }, 30s)) << sim.Stderr();
  // 120 registrations appended 120 changes; within a few seconds they are folded by the replica.
  EXPECT_TRUE(WaitFor([&] { return value("SELECT count(*) FROM pool_capacity_changes") == 0; }, 15s))
      << value("SELECT count(*) FROM pool_capacity_changes");
  EXPECT_EQ(value("SELECT up_gpus FROM pool_capacity WHERE region = 'leaderless'"), 240);
  EXPECT_EQ(fleet.PoolInt("leaderless", "H100-80GB", "total_gpus"), 240);
  EXPECT_EQ(SqlValue(*conn, "SELECT count(*) FROM spot_prices WHERE region = 'leaderless'"), "0")
      << "a leader ran after all (it reprices every pool)";
  EXPECT_EQ(sim.Stop(SIGTERM), 0) << sim.Stderr();
}
