// The customer's and operator's story over HTTP against the real apiserver and real agents:
// launch on-demand and spot, run, reserve capacity, spot price rises, preemption with notice,
// terminate, capacity back to free. Plus the rules around it.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <future>
#include <thread>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

class FleetE2E : public FleetTest {
 protected:
  void SetUp() override { StartFleet(64); }
  void StartAgents() {
    h100_ = fleet_->StartAgent("us-east", "H100-80GB", 2, 8);
    h200_ = fleet_->StartAgent("us-west", "H200-141GB", 1, 8);
    ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 16 &&
                                     fleet_->PoolInt("us-west", "H200-141GB", "total_gpus") == 8; },
                        20s))
        << h100_->Stderr();
    // The leader prices a pool whose hosts registered at its next tick.
    ASSERT_TRUE(WaitFor([&] {
      return Json(fleet_->Call("GET", "/v1/spot-prices/latest", member_)).at("data").as_array().size() == 2;
    }, 10s));
  }
  std::string Launch(const std::string& body, int expect = 201, std::map<std::string, std::string> headers = {}) {
    const auto r = fleet_->Call("POST", "/v1/instances", member_, body, std::move(headers));
    EXPECT_EQ(r.status, expect) << r.body;
    return r.status == 201 ? Str(Json(r), "id") : Str(Json(r).at("error"), "code");
  }
  std::unique_ptr<Process> h100_, h200_;
};

TEST_F(FleetE2E, TheWholeStory) {
  StartAgents();
  // The catalog shows prices and, per region, the spot price and what is free.
  const auto types = Json(fleet_->Call("GET", "/v1/instance-types", member_));
  bool saw_h100 = false;
  for (const auto& t : types.at("data").as_array()) {
    if (Str(t, "name") != "h100.8x") continue;
    saw_h100 = true;
    EXPECT_EQ(Str(t, "on_demand_price_per_gpu_hour"), "2.490000");
    const auto& region = t.at("regions").as_array().at(0);
    EXPECT_EQ(Str(region, "region"), "us-east");
    EXPECT_EQ(Str(region, "spot_price_per_gpu_hour"), "0.747000");  // idle pool: 70% off
    EXPECT_EQ(region.at("available_on_demand").as_int64(), 2);
  }
  EXPECT_TRUE(saw_h100);

  const std::string od = Launch(R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand","name":"train-1"})");
  const std::string spot = Launch(
      R"({"instance_type":"h100.1x","region":"us-east","market":"spot","max_price_per_gpu_hour":"2.400000"})");
  ASSERT_TRUE(fleet_->WaitState(member_, od, "running"));
  ASSERT_TRUE(fleet_->WaitState(member_, spot, "running"));
  auto inst = fleet_->Instance(member_, od);
  EXPECT_EQ(Str(inst, "name"), "train-1");
  EXPECT_EQ(inst.at("gpus").as_int64(), 8);
  EXPECT_FALSE(Str(inst, "host_id").empty());
  EXPECT_FALSE(Str(inst, "started_at").empty());
  const auto price_before = Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east&gpu_model=H100-80GB", member_));
  const std::string first_price = Str(price_before.at("data").as_array().back(), "price_per_gpu_hour");

  // The operator's internal demand takes 8 GPUs back: the spot instance gets notice.
  auto r = fleet_->Call("PUT", "/v1/capacity/pools/us-east/H100-80GB", fleet_->operator_key, R"({"internal_reserved_gpus":9})");
  EXPECT_EQ(r.status, 409) << "more than total − on-demand must be refused";
  r = fleet_->Call("PUT", "/v1/capacity/pools/us-east/H100-80GB", fleet_->operator_key, R"({"internal_reserved_gpus":8})");
  ASSERT_EQ(r.status, 200) << r.body;
  inst = fleet_->Instance(member_, spot);
  EXPECT_EQ(Str(inst, "state"), "preempting");
  EXPECT_EQ(Str(inst, "preempt_reason"), "reservation");
  EXPECT_FALSE(Str(inst, "preempt_at").empty());
  EXPECT_EQ(Str(fleet_->Instance(member_, od), "state"), "running");  // on-demand is never preempted for it

  // The spot price rises with the spare capacity gone.
  EXPECT_TRUE(WaitFor([&] {
    const auto hist = Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east&gpu_model=H100-80GB", member_));
    return spillway::ParseMicros(Str(hist.at("data").as_array().back(), "price_per_gpu_hour")) >
           spillway::ParseMicros(first_price);
  }, 10s));

  // After the notice the spot instance is gone, preempted.
  ASSERT_TRUE(fleet_->WaitState(member_, spot, "terminated", 15s));
  inst = fleet_->Instance(member_, spot);
  EXPECT_EQ(Str(inst, "end_reason"), "preempted");

  // The customer terminates the rest; the operator releases the reservation; all is free again.
  r = fleet_->Call("DELETE", "/v1/instances/" + od, member_);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(Str(Json(r), "state"), "terminating");
  ASSERT_TRUE(fleet_->WaitState(member_, od, "terminated"));
  EXPECT_EQ(Str(fleet_->Instance(member_, od), "end_reason"), "terminated");
  ASSERT_EQ(fleet_->Call("PUT", "/v1/capacity/pools/us-east/H100-80GB", fleet_->operator_key,
                         R"({"internal_reserved_gpus":0})").status, 200);
  const auto pool = fleet_->Pool("us-east", "H100-80GB");
  EXPECT_EQ(pool.at("on_demand_gpus").as_int64(), 0);
  EXPECT_EQ(pool.at("spot_gpus").as_int64(), 0);
  EXPECT_EQ(pool.at("spare_gpus").as_int64(), 16);

  // Gauges are refreshed by the controllers each tick: allow them one.
  for (const char* want : {"spillway_preemptions_total{gpu_model=\"H100-80GB\",reason=\"reservation\",region=\"us-east\"} 1",
                           "spillway_gpus{gpu_model=\"H100-80GB\",region=\"us-east\",use=\"free\"}",
                           "spillway_instances{market=\"spot\",state=\"terminated\"} 1",
                           "spillway_spot_price_per_gpu_hour{gpu_model=\"H200-141GB\",region=\"us-west\"}",
                           "spillway_agent_heartbeat_age_seconds", "\nspillway_controller_leader 1\n"})
    EXPECT_TRUE(WaitFor([&] { return Http(server_->admin_port(), "GET", "/metrics").body.find(want) != std::string::npos; }, 5s))
        << want;
}

TEST_F(FleetE2E, SpotBelowTheRisingPriceIsPreemptedForPrice) {
  StartAgents();
  const std::string spot = Launch(
      R"({"instance_type":"h100.1x","region":"us-east","market":"spot","max_price_per_gpu_hour":"0.800000"})");
  EXPECT_EQ(Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"spot","max_price_per_gpu_hour":"0.500000"})", 409),
            "max_price_below_spot_price");
  EXPECT_EQ(Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand","max_price_per_gpu_hour":"1.0"})", 422),
            "validation_failed");
  Launch(R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");  // spare falls: price rises
  ASSERT_TRUE(WaitFor([&] { return Str(fleet_->Instance(member_, spot), "state") == "preempting"; }, 10s));
  EXPECT_EQ(Str(fleet_->Instance(member_, spot), "preempt_reason"), "price");
}

TEST_F(FleetE2E, CapacityQuotaAndValidationRefuseWithNothingCreated) {
  StartAgents();
  const std::string small = fleet_->NewTenant("small", 8);
  const std::string small_key = fleet_->NewKey(small, "member");
  auto create = [&](const std::string& key, const std::string& body) { return fleet_->Call("POST", "/v1/instances", key, body); };
  EXPECT_EQ(create(small_key, R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})").status, 201);
  auto r = create(small_key, R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(Str(Json(r).at("error"), "code"), "quota_exceeded");
  // The pool has 16 GPUs: two 8x fit, a third does not.
  EXPECT_EQ(create(member_, R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})").status, 201);
  r = create(member_, R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(Str(Json(r).at("error"), "code"), "insufficient_capacity");
  EXPECT_EQ(create(member_, R"({"instance_type":"h100.1x","region":"us-east","market":"spot"})").status, 409);
  EXPECT_EQ(create(member_, R"({"instance_type":"h999.1x","region":"us-east","market":"spot"})").status, 422);
  EXPECT_EQ(create(member_, R"({"instance_type":"h100.1x","region":"mars","market":"spot"})").status, 422);
  EXPECT_EQ(create(member_, R"({"instance_type":"h100.1x","region":"us-east","market":"cheap"})").status, 422);
  // No host in the region offers the type: said plainly, not as "0 GPUs left".
  r = create(member_, R"({"instance_type":"a100.8x","region":"us-east","market":"on_demand"})");
  EXPECT_EQ(r.status, 422);
  EXPECT_EQ(Str(Json(r).at("error"), "code"), "instance_type_not_offered");
  EXPECT_NE(Str(Json(r).at("error"), "message").find("no host in us-east offers a100.8x"), std::string::npos);
  auto c = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*c).exec1("SELECT count(*) FROM instances")[0].as<int>(), 2);
  EXPECT_EQ(pqxx::nontransaction(*c).exec1("SELECT count(*) FROM gpu_allocations")[0].as<int>(), 16);
  const auto m = Http(server_->admin_port(), "GET", "/metrics");
  EXPECT_NE(m.body.find("spillway_placement_failures_total{reason=\"insufficient_capacity\"}"), std::string::npos);
  EXPECT_NE(m.body.find("spillway_placement_failures_total{reason=\"quota\"} 1"), std::string::npos);
}

TEST_F(FleetE2E, IdempotencyKeys) {
  StartAgents();
  const std::string body = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})";
  const auto a = fleet_->Call("POST", "/v1/instances", member_, body, {{"Idempotency-Key", "launch-1"}});
  const auto b = fleet_->Call("POST", "/v1/instances", member_, body, {{"Idempotency-Key", "launch-1"}});
  ASSERT_EQ(a.status, 201) << a.body;
  EXPECT_EQ(b.status, 201);
  EXPECT_EQ(Str(Json(a), "id"), Str(Json(b), "id"));
  EXPECT_EQ(b.Header("idempotent-replayed"), "true");
  const auto other = fleet_->Call("POST", "/v1/instances", member_,
                                  R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})",
                                  {{"Idempotency-Key", "launch-1"}});
  EXPECT_EQ(other.status, 422);
  EXPECT_EQ(Str(Json(other).at("error"), "code"), "idempotency_key_reused");
  // Another tenant's identical key is its own.
  const std::string t2 = fleet_->NewTenant("other", 8);
  const auto c = fleet_->Call("POST", "/v1/instances", fleet_->NewKey(t2, "member"), body, {{"Idempotency-Key", "launch-1"}});
  EXPECT_EQ(c.status, 201);
  EXPECT_NE(Str(Json(c), "id"), Str(Json(a), "id"));

  // A request racing one in flight with the same key: 409. Hold the first inside its transaction
  // by locking the pool's hosts, which placement must lock.
  auto conn = db_->Connect();
  pqxx::work lock(*conn);
  lock.exec("SELECT 1 FROM hosts WHERE region = 'us-east' FOR UPDATE");
  std::future<HttpResponse> first = std::async(std::launch::async, [&] {
    return fleet_->Call("POST", "/v1/instances", member_, body, {{"Idempotency-Key", "launch-2"}});
  });
  std::this_thread::sleep_for(500ms);
  const auto racing = fleet_->Call("POST", "/v1/instances", member_, body, {{"Idempotency-Key", "launch-2"}});
  EXPECT_EQ(racing.status, 409) << racing.body;
  EXPECT_EQ(Str(Json(racing).at("error"), "code"), "idempotency_key_in_flight");
  lock.commit();
  EXPECT_EQ(first.get().status, 201);
  auto count = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*count).exec_params1("SELECT count(*) FROM instances WHERE tenant_id = $1", tenant_)[0].as<int>(), 2);
}

TEST_F(FleetE2E, AnotherTenantsInstanceIs404) {
  StartAgents();
  const std::string id = Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})");
  const std::string other = fleet_->NewKey(fleet_->NewTenant("nosy", 8), "member");
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances/" + id, other).status, 404);
  EXPECT_EQ(fleet_->Call("DELETE", "/v1/instances/" + id, other).status, 404);
  EXPECT_EQ(Json(fleet_->Call("GET", "/v1/instances", other)).at("data").as_array().size(), 0u);
  EXPECT_NE(Str(fleet_->Instance(member_, id), "state"), "terminating");  // the refused DELETE changed nothing
}

TEST_F(FleetE2E, DrainingHostsTakeNothingNewAndSilentHostsFailTheirInstances) {
  StartAgents();
  const auto hosts = Json(fleet_->Call("GET", "/v1/hosts?region=us-east", fleet_->operator_key)).at("data").as_array();
  ASSERT_EQ(hosts.size(), 2u);
  const std::string drained = Str(hosts[0], "id"), open = Str(hosts[1], "id");
  ASSERT_EQ(fleet_->Call("PATCH", "/v1/hosts/" + drained, fleet_->operator_key, R"({"state":"draining"})").status, 200);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})"));
  for (const auto& id : ids) EXPECT_EQ(Str(fleet_->Instance(member_, id), "host_id"), open);
  const auto detail = Json(fleet_->Call("GET", "/v1/hosts/" + open, fleet_->operator_key));
  EXPECT_EQ(detail.at("gpus").as_array().size(), 8u);
  EXPECT_EQ(detail.at("gpus_allocated").as_int64(), 4);
  for (const auto& id : ids)
    ASSERT_TRUE(fleet_->WaitState(member_, id, "running"))  // seen once under ctest -j2: say what it was doing
        << fleet_->Instance(member_, id) << "\nagent: " << h100_->Stderr().substr(0, 6000)
        << "\napiserver: " << server_->process().Stderr().substr(0, 6000);

  // The agent dies: past fleet.heartbeat_timeout its hosts are down and their instances failed.
  h100_->Stop(SIGKILL);
  for (const auto& id : ids) ASSERT_TRUE(fleet_->WaitState(member_, id, "failed", 15s));
  EXPECT_EQ(Str(fleet_->Instance(member_, ids[0]), "end_reason"), "host_down");
  EXPECT_EQ(Str(Json(fleet_->Call("GET", "/v1/hosts/" + open, fleet_->operator_key)), "health"), "down");
  EXPECT_EQ(fleet_->PoolInt("us-east", "H100-80GB", "total_gpus"), 0);
  // It comes back: the same hosts register again (same GPUs), and are up.
  h100_ = fleet_->StartAgent("us-east", "H100-80GB", 2, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 16; }, 15s));
  EXPECT_EQ(Json(fleet_->Call("GET", "/v1/hosts?region=us-east", fleet_->operator_key)).at("data").as_array().size(), 2u);
}

TEST_F(FleetE2E, ExecRuntimeRunsTheLauncherWithItsGpusAndStopsIt) {
  char tmpl[] = "/tmp/spillway-exec-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const std::string launcher = "echo \"$CUDA_VISIBLE_DEVICES $SPILLWAY_INSTANCE_ID\" > " + dir +
                               "/$SPILLWAY_INSTANCE_ID.env; trap 'echo term > " + dir +
                               "/$SPILLWAY_INSTANCE_ID.term; exit 0' TERM; while :; do sleep 0.1; done";
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 0, 8, {"--runtime", "exec", "--launcher", launcher});
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s)) << agent->Stderr();
  Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})");  // takes GPU 0
  const std::string id = Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})");
  ASSERT_TRUE(fleet_->WaitState(member_, id, "running")) << agent->Stderr();
  std::string env;
  ASSERT_TRUE(WaitFor([&] {
    std::ifstream f(dir + "/" + id + ".env");
    std::getline(f, env);
    return !env.empty();
  }, 5s));
  EXPECT_EQ(env, "1 " + id);  // CUDA_VISIBLE_DEVICES is the instance's GPU
  ASSERT_EQ(fleet_->Call("DELETE", "/v1/instances/" + id, member_).status, 200);
  ASSERT_TRUE(fleet_->WaitState(member_, id, "terminated")) << agent->Stderr();
  EXPECT_TRUE(std::ifstream(dir + "/" + id + ".term").good()) << "the launcher did not get SIGTERM";
  agent->Stop(SIGTERM);
  RunCommand({"/bin/rm", "-rf", dir}, {}, nullptr);
}

TEST_F(FleetE2E, OnDemandWaitsPendingWhileSpotLeavesUnderNotice) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  std::vector<std::string> spot;
  for (int i = 0; i < 8; ++i) spot.push_back(Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"spot"})"));
  for (const auto& id : spot) ASSERT_TRUE(fleet_->WaitState(member_, id, "running"));

  // The host is full of spot: on-demand takes it, after the spot instances' notice.
  const std::string od = Launch(R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");
  auto inst = fleet_->Instance(member_, od);
  EXPECT_EQ(Str(inst, "state"), "pending");
  EXPECT_EQ(inst.at("gpu_indices").as_array().size(), 0u);
  // It says when it expects its GPUs: the end of the spot instances' notice.
  const std::string expected = Str(inst, "expected_placement_at");
  ASSERT_FALSE(expected.empty()) << inst;
  EXPECT_EQ(expected, Str(fleet_->Instance(member_, spot[0]), "preempt_at"));
  for (const auto& id : spot) {
    EXPECT_EQ(Str(fleet_->Instance(member_, id), "state"), "preempting");
    EXPECT_EQ(Str(fleet_->Instance(member_, id), "preempt_reason"), "capacity");
  }
  // A new spot instance cannot take the GPUs being freed for it.
  EXPECT_EQ(Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"spot"})", 409), "insufficient_capacity");

  ASSERT_TRUE(fleet_->WaitState(member_, od, "running", 20s));
  inst = fleet_->Instance(member_, od);
  EXPECT_EQ(inst.at("gpu_indices").as_array().size(), 8u);
  for (const auto& id : spot) {
    EXPECT_EQ(Str(fleet_->Instance(member_, id), "state"), "terminated");
    EXPECT_EQ(Str(fleet_->Instance(member_, id), "end_reason"), "preempted");
  }
}

TEST_F(FleetE2E, QuotaUsageIsShownAndLoweringItBelowUsageSaysSo) {
  StartAgents();
  Launch(R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");
  auto t = Json(fleet_->Call("GET", "/v1/tenants/" + tenant_, member_));
  EXPECT_EQ(t.at("gpus_in_use").as_int64(), 8);
  EXPECT_EQ(t.at("gpu_quota").as_int64(), 64);
  EXPECT_FALSE(t.as_object().contains("warnings"));
  // Lowering the quota below what is in use is allowed, and the answer says what it means.
  const auto r = fleet_->Call("PATCH", "/v1/tenants/" + tenant_, fleet_->admin, R"({"gpu_quota":4})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("gpu_quota").as_int64(), 4);
  ASSERT_TRUE(Json(r).as_object().contains("warnings")) << r.body;
  EXPECT_NE(r.body.find("below the 8 GPUs in use"), std::string::npos) << r.body;
  EXPECT_EQ(Launch(R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})", 409), "quota_exceeded");
  // Raising it again says nothing more.
  EXPECT_FALSE(Json(fleet_->Call("PATCH", "/v1/tenants/" + tenant_, fleet_->admin, R"({"gpu_quota":64})"))
                   .as_object()
                   .contains("warnings"));
}

TEST_F(FleetE2E, RevokingARevokedKeyChangesNothingAndIsAuditedOnce) {
  const auto created = Json(fleet_->Call("POST", "/v1/tenants/" + tenant_ + "/api-keys", fleet_->admin,
                                         R"({"role":"member","name":"twice"})"));
  const std::string id = Str(created, "id");
  const auto first = fleet_->Call("DELETE", "/v1/tenants/" + tenant_ + "/api-keys/" + id, fleet_->admin);
  ASSERT_EQ(first.status, 200) << first.body;
  std::this_thread::sleep_for(20ms);
  const auto second = fleet_->Call("DELETE", "/v1/tenants/" + tenant_ + "/api-keys/" + id, fleet_->admin);
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(Str(Json(second), "revoked_at"), Str(Json(first), "revoked_at"));  // not moved
  auto c = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*c).exec_params1("SELECT count(*) FROM audit_log WHERE action = 'api_key.revoke' "
                                                  "AND target = $1", id)[0].as<int>(), 1);
}

TEST_F(FleetE2E, HostsAreCountedByHealthAndState) {
  StartAgents();
  const auto hosts = Json(fleet_->Call("GET", "/v1/hosts?region=us-east", fleet_->operator_key)).at("data").as_array();
  ASSERT_EQ(hosts.size(), 2u);
  ASSERT_EQ(fleet_->Call("PATCH", "/v1/hosts/" + Str(hosts[0], "id"), fleet_->operator_key, R"({"state":"draining"})").status, 200);
  EXPECT_TRUE(WaitFor([&] {
    const auto m = Http(server_->admin_port(), "GET", "/metrics").body;
    return m.find("spillway_hosts{health=\"up\",state=\"active\"} 2") != std::string::npos &&
           m.find("spillway_hosts{health=\"up\",state=\"draining\"} 1") != std::string::npos &&
           m.find("spillway_hosts{health=\"down\",state=\"active\"} 0") != std::string::npos;
  }, 10s)) << Http(server_->admin_port(), "GET", "/metrics").body.substr(0, 200);
}
