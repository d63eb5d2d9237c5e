// Two apiserver replicas on one database: concurrent creates never double-book a GPU, and the
// controllers move to the surviving replica when the leader is killed.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <set>
#include <thread>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {
bool Leads(int admin_port) {
  return Http(admin_port, "GET", "/metrics").body.find("\nspillway_controller_leader 1\n") != std::string::npos;
}
}  // namespace

TEST(Replicas, ConcurrentCreatesNeverDoubleBookAGpu) {
  TestDb db;
  auto env = FastFleetEnv();
  env["SPILLWAY_DATABASE_POOL_SIZE"] = "8";
  ApiServer a(db.dsn(), env), b(db.dsn(), env);
  ASSERT_TRUE(a.WaitReady()) << a.process().Stderr();
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  Fleet fleet(db, a);
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 6, 8);  // 48 GPUs
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 48; }, 20s));
  std::vector<std::string> keys;
  for (int t = 0; t < 8; ++t) keys.push_back(fleet.NewKey(fleet.NewTenant("race-" + std::to_string(t), 1000), "member"));

  // 200 one-GPU on-demand creates from 8 tenants, spread over both replicas: exactly 48 fit.
  const std::string body = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})";
  std::atomic<int> next{0}, created{0}, refused{0}, other{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 16; ++c)
    clients.emplace_back([&, c] {
      for (int i; (i = next++) < 200;) {
        const int port = (i % 2 == 0) ? a.port() : b.port();
        const auto r = Http(port, "POST", "/v1/instances", keys[(i + c) % 8], body);
        if (r.status == 201) ++created;
        else if (r.status == 409 && r.body.find("insufficient_capacity") != std::string::npos) ++refused;
        else ++other;
      }
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(other, 0);
  EXPECT_EQ(created, 48);
  EXPECT_EQ(refused, 152);

  auto c = db.Connect();
  pqxx::nontransaction tx(*c);
  // No GPU is held twice (the primary key forbids it; check what the instances were given, too).
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM (SELECT host_id, unnest(gpu_indices) g FROM instances "
                     "GROUP BY 1, 2 HAVING count(*) > 1) d")[0].as<int>(), 0);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM gpu_allocations")[0].as<int>(), 48);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM instances WHERE state <> 'pending'")[0].as<int>(), 48);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM gpu_allocations a JOIN instances i ON i.id = a.instance_id "
                     "AND a.gpu_index = ANY (i.gpu_indices) AND a.host_id = i.host_id")[0].as<int>(), 48);
}

TEST(Replicas, ControllersMoveToTheSurvivorWhenTheLeaderIsKilled) {
  TestDb db;
  auto env = FastFleetEnv();
  auto a = std::make_unique<ApiServer>(db.dsn(), env);
  ASSERT_TRUE(a->WaitReady()) << a->process().Stderr();
  ApiServer b(db.dsn(), env);
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  ASSERT_TRUE(WaitFor([&] { return Leads(a->admin_port()) != Leads(b.admin_port()); }, 10s))
      << "a leads: " << Leads(a->admin_port()) << ", b leads: " << Leads(b.admin_port()) << "\n"
      << a->process().Stderr() << b.process().Stderr();
  // Exactly one leads; make `a` the leader for the rest of the test (swap roles if needed).
  const bool a_leads = Leads(a->admin_port());
  ApiServer& survivor = a_leads ? b : *a;

  Fleet fleet(db, survivor);
  const std::string key = fleet.NewKey(fleet.NewTenant("failover", 16), "member");
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  const auto r = fleet.Call("POST", "/v1/instances", key,
                            R"({"instance_type":"h100.1x","region":"us-east","market":"spot"})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = Str(Json(r), "id");
  ASSERT_TRUE(fleet.WaitState(key, id, "running"));

  // kill -9 the leader: no graceful release, its PostgreSQL session simply ends.
  if (a_leads) a->process().Stop(SIGKILL);
  else b.process().Stop(SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return Leads(survivor.admin_port()); }, 15s)) << survivor.process().Stderr();

  // And the new leader does the controllers' work: a preemption's deadline is honoured.
  ASSERT_EQ(fleet.Call("PUT", "/v1/capacity/pools/us-east/H100-80GB", fleet.operator_key,
                       R"({"internal_reserved_gpus":8})").status, 200);
  EXPECT_EQ(Str(fleet.Instance(key, id), "state"), "preempting");
  EXPECT_TRUE(fleet.WaitState(key, id, "terminated", 15s));
  EXPECT_EQ(Str(fleet.Instance(key, id), "end_reason"), "preempted");
}
