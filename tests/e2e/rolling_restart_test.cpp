// Rolling restarts (issue #23, point 7): two replicas behind a small round-robin client, under load
// (keyed launches, terminations, reads, an agent shipping samples), each sent SIGTERM and started
// again in turn. SIGTERM stops accepting, finishes what is in flight, hands leadership over and
// exits 0; the client, as a load balancer does, sends a request that found no listener (or lost its
// connection before any answer) to the other replica, a keyed POST with the same Idempotency-Key.
// Nothing fails, no acknowledged launch is lost or made twice, and no sample is lost or stored twice.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <set>
#include <thread>

#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

// Round-robin over the replicas; a request that got no answer at all goes to the next one.
class RoundRobin {
 public:
  explicit RoundRobin(std::vector<ApiServer*> replicas) : replicas_(std::move(replicas)) {}
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "", std::map<std::string, std::string> headers = {}) {
    for (int attempt = 0; attempt < 40; ++attempt) {
      ApiServer* r = replicas_[next_++ % replicas_.size()];
      auto res = Http(r->port(), method, path, key, body, headers);
      if (res.status != 0) return res;
      ++retried;
      std::this_thread::sleep_for(25ms);
    }
    return {};
  }
  std::atomic<int> retried{0};

 private:
  std::vector<ApiServer*> replicas_;
  std::atomic<unsigned> next_{0};
};

}  // namespace

TEST(RollingRestart, TwoReplicasRestartedInTurnUnderLoadDropNothing) {
  TestDb db;
  auto env = FastFleetEnv();
  // The agent talks to one replica and is not heard while that one restarts: the heartbeat timeout
  // is longer than a restart, as in production (30 s), so no host is judged for it.
  env["SPILLWAY_FLEET_HEARTBEAT_TIMEOUT"] = "30s";
  env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "1s";
  // The load is a few threads on one key as fast as they go (past 100 requests a second on a quick
  // machine): load for the restart to drop, not a tenant to limit (rate_limit_test.cpp covers that).
  env["SPILLWAY_RATELIMIT_ENABLED"] = "false";
  ApiServer a(db.dsn(), env), b(db.dsn(), env);
  ASSERT_TRUE(a.WaitReady()) << a.process().Stderr();
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  Fleet fleet(db, a);
  const std::string tenant = fleet.NewTenant("steady", 64);
  const std::string key = fleet.NewKey(tenant, "member");
  auto agent = fleet.StartAgent("eu-north", "H100-80GB", 2, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("eu-north", "H100-80GB", "total_gpus") == 16; }, 20s));
  // One instance runs throughout: its samples are what must arrive, once each.
  auto r = fleet.Call("POST", "/v1/instances", key, R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand","name":"steady"})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string steady = Str(Json(r), "id");
  ASSERT_TRUE(fleet.WaitState(key, steady, "running"));

  RoundRobin lb({&a, &b});
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::mutex mu;
  std::map<std::string, std::string> launched;  // idempotency key -> instance id, as acknowledged
  std::vector<std::string> failures;
  const auto fail = [&](const std::string& what, const HttpResponse& res) {
    ++failed;
    std::lock_guard lk(mu);
    failures.push_back(what + " -> " + std::to_string(res.status) + " " + res.body);
  };
  std::vector<std::thread> load;
  for (int t = 0; t < 2; ++t)
    load.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        const std::string idem = "rr-" + std::to_string(t) + "-" + std::to_string(i);
        auto res = lb.Call("POST", "/v1/instances", key, R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})",
                           {{"Idempotency-Key", idem}});
        if (res.status == 409) {  // the pool is full of instances still stopping: an answer, not a failure
          ++ok;
          std::this_thread::sleep_for(100ms);
          continue;
        }
        if (res.status != 201) {
          fail("launch " + idem, res);
          continue;
        }
        const std::string id = Str(Json(res), "id");
        {
          std::lock_guard lk(mu);
          launched[idem] = id;
        }
        ++ok;
        res = lb.Call("GET", "/v1/instances/" + id, key);
        res.status == 200 ? ++ok : (fail("get " + id, res), 0);
        res = lb.Call("DELETE", "/v1/instances/" + id, key);
        res.status == 200 ? ++ok : (fail("terminate " + id, res), 0);
        res = lb.Call("GET", "/v1/instances?limit=20", key);
        res.status == 200 ? ++ok : (fail("list", res), 0);
      }
    });

  std::this_thread::sleep_for(2s);
  for (ApiServer* replica : {&a, &b}) {
    const int before = ok.load();
    EXPECT_EQ(replica->process().Stop(SIGTERM, 30s), 0) << replica->process().Stderr();
    EXPECT_NE(replica->process().Stderr().find("stopped leading"), std::string::npos);
    std::this_thread::sleep_for(1s);  // the other replica alone
    replica->Restart();
    ASSERT_TRUE(replica->WaitReady()) << replica->process().Stderr();
    std::this_thread::sleep_for(2s);
    EXPECT_GT(ok.load(), before) << "no request was answered around the restart";
  }
  stop = true;
  for (auto& t : load) t.join();
  std::printf("rolling restart: %d requests answered, %d failed, %d sent again to the other replica\n", ok.load(),
              failed.load(), lb.retried.load());
  EXPECT_EQ(failed.load(), 0) << (failures.empty() ? "" : failures.front());
  EXPECT_GT(lb.retried.load(), 0) << "the restarts were never noticed: the test did not test them";

  // Every acknowledged launch exists once, under the id it was acknowledged with; no retry made a
  // second instance.
  auto conn = db.Connect();
  std::set<std::string> ids;
  for (const auto& [idem, id] : launched) ids.insert(id);
  EXPECT_EQ(ids.size(), launched.size());
  EXPECT_EQ(SqlValue(*conn, "SELECT count(*) FROM instances WHERE tenant_id = $1 AND id <> $2", tenant, steady),
            std::to_string(launched.size()));
  for (const auto& id : ids) EXPECT_EQ(SqlValue(*conn, "SELECT count(*) FROM instances WHERE id = $1", id), "1") << id;

  // The steady instance's samples: none stored twice, and its metering covers the time it held its
  // GPU (the agent spooled through its replica's restart and sent the rest after).
  EXPECT_EQ(SqlValue(*conn, "SELECT count(*) - count(DISTINCT (host_id, gpu_index, ts)) FROM usage_samples"), "0");
  double coverage = 0;
  ASSERT_TRUE(fleet.WaitCoverage(key, steady, 0.99, 30s, &coverage)) << "coverage " << coverage;
}
