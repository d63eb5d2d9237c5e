// What a new user hit (issue #9): operators and admins act on any instance, members manage their
// own keys, availability ignores draining hosts, spot prices newest first, suspension's grace, and
// the audit log. Real apiserver and agent processes over loopback HTTP.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "fleet_support.hpp"

namespace spillway::test {
namespace {

using namespace std::chrono_literals;

class NewUser : public FleetTest {
 protected:
  void SetUp() override { StartFleet(64); }
  std::string Launch(const std::string& key, const std::string& body, int want = 201) {
    const auto r = fleet_->Call("POST", "/v1/instances", key, body);
    EXPECT_EQ(r.status, want) << r.body;
    return r.status == 201 ? Str(Json(r), "id") : Str(Json(r).at("error"), "code");
  }
  boost::json::array Audit(const std::string& query) {
    const auto r = fleet_->Call("GET", "/v1/audit" + query, fleet_->admin);
    EXPECT_EQ(r.status, 200) << r.body;
    return Json(r).at("data").as_array();
  }
  const std::string kOneGpu = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})";
};

TEST_F(NewUser, OperatorsAndAdminsSeeAndStopAnyTenantsInstancesMembersOnlyTheirOwn) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  const std::string other_tenant = fleet_->NewTenant("other", 8);
  const std::string other = fleet_->NewKey(other_tenant, "member");
  const std::string mine = Launch(member_, kOneGpu), theirs = Launch(other, kOneGpu);
  const std::string host = Str(fleet_->Instance(member_, mine), "host_id");

  // The operator finds both by host, and by tenant.
  auto page = Json(fleet_->Call("GET", "/v1/instances?host_id=" + host, fleet_->operator_key)).at("data").as_array();
  EXPECT_EQ(page.size(), 2u);
  page = Json(fleet_->Call("GET", "/v1/instances?tenant_id=" + other_tenant, fleet_->operator_key)).at("data").as_array();
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(Str(page[0], "id"), theirs);
  page = Json(fleet_->Call("GET", "/v1/instances?state=provisioning&host_id=" + host, fleet_->admin)).at("data").as_array();
  for (const auto& i : page) EXPECT_EQ(Str(i, "state"), "provisioning");
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances/" + theirs, fleet_->operator_key).status, 200);

  // A member sees its own only: another tenant's is 404, and it cannot filter by host.
  page = Json(fleet_->Call("GET", "/v1/instances", member_)).at("data").as_array();
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(Str(page[0], "id"), mine);
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances/" + theirs, member_).status, 404);
  EXPECT_EQ(fleet_->Call("DELETE", "/v1/instances/" + theirs, member_).status, 404);
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances?tenant_id=" + other_tenant, member_).status, 404);
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances?host_id=" + host, member_).status, 400);
  // Finance reads tenants, not instances.
  const std::string finance = fleet_->NewKey(fleet_->operator_tenant, "finance");
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances", finance).status, 403);

  // The operator stops the runaway one; the audit names the operator's key and the owner tenant.
  const auto r = fleet_->Call("DELETE", "/v1/instances/" + theirs, fleet_->operator_key);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r), "state"), "terminating");
  const auto entries = Audit("?action=instance.terminate");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(Str(entries[0], "target"), theirs);
  EXPECT_EQ(Str(entries[0], "tenant_id"), other_tenant);
  const std::string operator_key_id = "key_" + fleet_->operator_key.substr(4, 26);
  EXPECT_EQ(Str(entries[0], "actor_key_id"), operator_key_id);
  ASSERT_TRUE(fleet_->WaitState(other, theirs, "terminated"));
  EXPECT_EQ(Str(fleet_->Instance(other, theirs), "end_reason"), "terminated");
  // Repeating it changes nothing and is not audited again.
  EXPECT_EQ(fleet_->Call("DELETE", "/v1/instances/" + theirs, fleet_->admin).status, 200);
  EXPECT_EQ(Audit("?action=instance.terminate").size(), 1u);
}

TEST_F(NewUser, MembersManageTheirOwnTenantsKeysAndNeverRaiseARole) {
  const std::string path = "/v1/tenants/" + tenant_ + "/api-keys";
  auto r = fleet_->Call("POST", path, member_, R"({"role":"member","name":"ci"})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string new_id = Str(Json(r), "id"), new_secret = Str(Json(r), "secret");
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances", new_secret).status, 200);
  // Never a higher role, never another tenant's keys.
  for (const char* role : {"admin", "operator", "finance"})
    EXPECT_EQ(fleet_->Call("POST", path, member_, std::string(R"({"role":")") + role + "\"}").status, 403) << role;
  const std::string other_tenant = fleet_->NewTenant("other", 0);
  fleet_->NewKey(other_tenant, "member");
  EXPECT_EQ(fleet_->Call("GET", "/v1/tenants/" + other_tenant + "/api-keys", member_).status, 404);
  EXPECT_EQ(fleet_->Call("POST", "/v1/tenants/" + other_tenant + "/api-keys", member_, R"({"role":"member"})").status,
            404);
  const auto others = Json(fleet_->Call("GET", "/v1/tenants/" + other_tenant + "/api-keys", fleet_->admin));
  const std::string other_key = Str(others.at("data").as_array()[0], "id");
  EXPECT_EQ(fleet_->Call("DELETE", "/v1/tenants/" + other_tenant + "/api-keys/" + other_key, member_).status, 404);
  EXPECT_EQ(fleet_->Call("DELETE", path + "/" + other_key, member_).status, 404);  // not in its tenant

  // It lists and revokes its own; the revoked key stops working at once.
  const auto mine = Json(fleet_->Call("GET", path, member_)).at("data").as_array();
  EXPECT_EQ(mine.size(), 2u);
  r = fleet_->Call("DELETE", path + "/" + new_id, member_);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(Str(Json(r), "revoked_at").empty());
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances", new_secret).status, 401);
  EXPECT_EQ(Audit("?action=api_key.revoke&tenant_id=" + tenant_).size(), 1u);
}

TEST_F(NewUser, DrainingHostsOfferNothingAndTheCatalogJudgesEachTypeOnOneHost) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 2, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 16; }, 20s));
  auto region_of = [&](const std::string& type) {
    const auto types = Json(fleet_->Call("GET", "/v1/instance-types", member_));
    for (const auto& t : types.at("data").as_array())
      if (Str(t, "name") == type)
        for (const auto& r : t.at("regions").as_array())
          if (Str(r, "region") == "us-east") return boost::json::value(r);
    return boost::json::value(nullptr);
  };
  EXPECT_EQ(region_of("h100.8x").at("available_on_demand").as_int64(), 2);
  EXPECT_EQ(region_of("h100.8x").at("available_spot").as_int64(), 2);
  EXPECT_EQ(fleet_->PoolInt("us-east", "H100-80GB", "spare_gpus"), 16);
  // One host full, one GPU taken on the other: 7 GPUs are free, but no host has 8.
  Launch(member_, R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");
  Launch(member_, kOneGpu);
  EXPECT_EQ(region_of("h100.8x").at("available_spot").as_int64(), 0);
  EXPECT_EQ(region_of("h100.1x").at("available_spot").as_int64(), 7);

  // Drain the host with free GPUs left: they are offered no more.
  std::string drained;
  const auto hosts = Json(fleet_->Call("GET", "/v1/hosts?region=us-east", fleet_->operator_key));
  for (const auto& h : hosts.at("data").as_array())
    if (h.at("gpus_allocated").as_int64() < 8) drained = Str(h, "id");
  ASSERT_FALSE(drained.empty());
  ASSERT_EQ(fleet_->Call("PATCH", "/v1/hosts/" + drained, fleet_->operator_key, R"({"state":"draining"})").status, 200);
  EXPECT_EQ(fleet_->PoolInt("us-east", "H100-80GB", "spare_gpus"), 0);
  EXPECT_EQ(region_of("h100.1x").at("available_spot").as_int64(), 0);
  EXPECT_EQ(region_of("h100.1x").at("free_gpus").as_int64(), 0);
  EXPECT_EQ(Launch(member_, R"({"instance_type":"h100.1x","region":"us-east","market":"spot"})", 409),
            "insufficient_capacity");
  ASSERT_EQ(fleet_->Call("PATCH", "/v1/hosts/" + drained, fleet_->operator_key, R"({"state":"active"})").status, 200);
  EXPECT_EQ(fleet_->PoolInt("us-east", "H100-80GB", "spare_gpus"), 7);
}

TEST_F(NewUser, SpotPricesReadNewestFirstAndTheLatestPerPool) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  auto agent2 = fleet_->StartAgent("eu-north", "A100-80GB", 1, 8);
  // Both hosts registered (each agent on its own: neither waits for the other).
  ASSERT_TRUE(WaitFor([&] {
    return fleet_->PoolInt("eu-north", "A100-80GB", "total_gpus") == 8 &&
           fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8;
  }, 20s));
  // The leader prices each new pool at its next tick (idle: 70 % off); then a launch moves it.
  ASSERT_TRUE(WaitFor([&] {
    return Json(fleet_->Call("GET", "/v1/spot-prices/latest", member_)).at("data").as_array().size() == 2;
  }, 10s));
  Launch(member_, R"({"instance_type":"h100.8x","region":"us-east","market":"on_demand"})");  // the price moves
  ASSERT_TRUE(WaitFor([&] {
    return Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east", member_)).at("data").as_array().size() >= 3;
  }, 20s));
  const auto asc = Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east", member_)).at("data").as_array();
  const auto desc = Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east&order=desc", member_)).at("data").as_array();
  ASSERT_GE(desc.size(), 3u);
  for (size_t i = 1; i < desc.size(); ++i) EXPECT_GT(Str(desc[i - 1], "effective_from"), Str(desc[i], "effective_from"));
  // Pages newest first follow on without a gap.
  auto page = Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east&order=desc&limit=1", member_));
  const std::string cursor = Str(page, "next_cursor");
  ASSERT_FALSE(cursor.empty());
  page = Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east&order=desc&limit=1&cursor=" + cursor, member_));
  EXPECT_EQ(Str(page.at("data").as_array()[0], "effective_from"), Str(desc[1], "effective_from"));
  EXPECT_EQ(fleet_->Call("GET", "/v1/spot-prices?order=sideways", member_).status, 400);

  // The latest: one per pool, the newest of each.
  const auto latest = Json(fleet_->Call("GET", "/v1/spot-prices/latest", member_)).at("data").as_array();
  ASSERT_EQ(latest.size(), 2u);
  for (const auto& p : latest) {
    if (Str(p, "region") != "us-east") continue;
    const auto newest = Json(fleet_->Call("GET", "/v1/spot-prices?region=us-east&order=desc&limit=1", member_));
    EXPECT_EQ(Str(p, "price_per_gpu_hour"), Str(newest.at("data").as_array()[0], "price_per_gpu_hour"));
  }
  EXPECT_EQ(Json(fleet_->Call("GET", "/v1/spot-prices/latest?region=eu-north", member_)).at("data").as_array().size(), 1u);
}

// A short grace, so the test sees the step run.
class Suspension : public FleetTest {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDb>();
    auto env = FastFleetEnv();
    env["SPILLWAY_TENANTS_SUSPENSION_GRACE"] = "3s";
    server_ = std::make_unique<ApiServer>(db_->dsn(), env);
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
    tenant_ = fleet_->NewTenant("customer", 16);
    member_ = fleet_->NewKey(tenant_, "member");
  }
};

TEST_F(Suspension, InstancesEndAfterTheGraceUnlessTheTenantIsResumedFirst) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  const std::string body = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})";
  const std::string kept = Str(Json(fleet_->Call("POST", "/v1/instances", member_, body)), "id");
  ASSERT_TRUE(fleet_->WaitState(fleet_->admin, kept, "running"));
  const std::string path = "/v1/tenants/" + tenant_;

  // Suspended and resumed within the grace: the instance keeps running.
  auto r = fleet_->Call("PATCH", path, fleet_->admin, R"({"status":"suspended"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(Str(Json(r), "suspended_at").empty());
  EXPECT_EQ(Json(r).at("warnings").as_array().size(), 1u);
  ASSERT_EQ(fleet_->Call("PATCH", path, fleet_->admin, R"({"status":"active"})").status, 200);
  std::this_thread::sleep_for(4s);
  EXPECT_EQ(Str(fleet_->Instance(fleet_->admin, kept), "state"), "running");

  // Suspended past the grace: it is terminated, end_reason tenant_suspended, by the system.
  ASSERT_EQ(fleet_->Call("PATCH", path, fleet_->admin, R"({"status":"suspended"})").status, 200);
  ASSERT_TRUE(fleet_->WaitState(fleet_->admin, kept, "terminated", 20s));
  EXPECT_EQ(Str(fleet_->Instance(fleet_->admin, kept), "end_reason"), "tenant_suspended");
  const auto audit = Json(fleet_->Call("GET", "/v1/audit?tenant_id=" + tenant_, fleet_->admin)).at("data").as_array();
  std::vector<std::string> actions;
  for (const auto& e : audit) actions.push_back(Str(e, "action"));
  EXPECT_EQ(std::count(actions.begin(), actions.end(), "tenant.suspend"), 2);
  EXPECT_EQ(std::count(actions.begin(), actions.end(), "tenant.resume"), 1);
  bool system_terminate = false;
  for (const auto& e : audit)
    if (Str(e, "action") == "instance.terminate" && e.at("actor_key_id").is_null()) system_terminate = true;
  EXPECT_TRUE(system_terminate);
}

TEST_F(NewUser, TheAuditLogPagesAndFilters) {
  for (int i = 0; i < 3; ++i) fleet_->NewTenant("t" + std::to_string(i), 0);
  auto all = Audit("?action=tenant.create");
  EXPECT_EQ(all.size(), 5u);  // the operator's, the customer, three more
  auto page = Json(fleet_->Call("GET", "/v1/audit?action=tenant.create&limit=2", fleet_->admin));
  ASSERT_EQ(page.at("data").as_array().size(), 2u);
  page = Json(fleet_->Call("GET", "/v1/audit?action=tenant.create&limit=2&cursor=" + Str(page, "next_cursor"),
                           fleet_->admin));
  EXPECT_EQ(Str(page.at("data").as_array()[0], "id"), Str(all[2], "id"));
  const std::string admin_key_id = "key_" + fleet_->admin.substr(4, 26);
  for (const auto& e : Audit("?actor=" + admin_key_id)) EXPECT_EQ(Str(e, "actor_key_id"), admin_key_id);
  EXPECT_TRUE(Audit("?since=2999-01-01T00:00:00Z").empty());
  EXPECT_EQ(fleet_->Call("GET", "/v1/audit?actor=nobody", fleet_->admin).status, 400);
  EXPECT_EQ(fleet_->Call("GET", "/v1/audit", fleet_->operator_key).status, 403);
  EXPECT_EQ(fleet_->Call("GET", "/v1/audit", member_).status, 403);
}

}  // namespace
}  // namespace spillway::test
