// The fleet's rules against a real PostgreSQL, driven by a fake clock: silence, unreported
// instances, preemption deadlines, placement and the allocation history, without HTTP or sleeps.
#include <gtest/gtest.h>

#include "provisioning/fleet.hpp"
#include "core/db.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using spillway::test::TestDb;
using namespace std::chrono_literals;

namespace {

const TimeMs kT0 = FromEpochMs(1'800'000'000'000);  // 2027-01-15

class FleetRules : public ::testing::Test {
 protected:
  void SetUp() override {
    conn_ = OpenSession({db_.dsn(), "spillway-test", 3000ms, 30000ms});
    pqxx::work tx(*conn_);
    tx.exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ('ten_t', 'acme', 100)");
    for (const char* h : {"hst_a", "hst_b", "hst_c"}) AddHost(tx, h, "us-east");
    tx.commit();
  }
  void AddHost(pqxx::work& tx, const std::string& id, const std::string& region) {
    tx.exec_params("INSERT INTO hosts (id, hostname, region, zone, gpu_model, gpu_count, token_hash, last_heartbeat) "
                   "VALUES ($1, $1, $2, 'a', 'H100-80GB', 8, 'x', $3::timestamptz)",
                   id, region, FormatTime(kT0));
    for (int g = 0; g < 8; ++g)
      tx.exec_params("INSERT INTO gpus (host_id, gpu_index, uuid, model, memory_bytes) VALUES ($1, $2, $3, 'H100-80GB', 1)",
                     id, g, id + "-" + std::to_string(g));
  }
  // An instance placed by the real rules (LoadPool, PlanPlacement, ApplyPlacement), then running.
  std::string Launch(const std::string& id, int gpus, const std::string& market) {
    InTransaction(*conn_, [&](pqxx::work& tx) {
      tx.exec_params("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state) "
                     "VALUES ($1, 'ten_t', 'h100.x', 'H100-80GB', $2, 'us-east', $3, 'pending')",
                     id, gpus, market);
      const auto pool = LoadPool(tx, "us-east", "H100-80GB", true);
      ApplyPlacement(tx, fc_, id, PlanPlacement(pool, gpus, *ParseMarket(market)));
      RecordHeartbeat(tx, Host(tx, id), "test", {{id, "running"}}, clock_.Now());
    });
    return id;
  }
  std::string Host(pqxx::transaction_base& tx, const std::string& instance) {
    return tx.exec_params1("SELECT host_id FROM instances WHERE id = $1", instance)[0].as<std::string>();
  }
  // One value of a query; values go in as parameters ($1, $2), never into the SQL text.
  template <class... Args>
  std::string Field(const std::string& sql, const Args&... args) {
    pqxx::nontransaction tx(*conn_);
    const pqxx::row r = tx.exec_params1(sql, args...);
    return r[0].is_null() ? "" : r[0].as<std::string>();
  }
  void Heartbeat(const std::string& host) {
    InTransaction(*conn_, [&](pqxx::work& tx) { RecordHeartbeat(tx, host, "test", {}, clock_.Now()); });
  }

  TestDb db_;
  std::unique_ptr<pqxx::connection> conn_;
  FleetSettings settings_ = FleetSettings::From(Config::Defaults());
  FakeClock clock_{kT0};
  FleetContext fc_{settings_, nullptr, clock_};
};

}  // namespace

TEST_F(FleetRules, ASilentHostFailsItsInstancesOnlyAfterTheTimeoutOfHeardTime) {
  const std::string id = Launch("ins_1", 8, "on_demand");
  const std::string host = Field("SELECT host_id FROM instances WHERE id = 'ins_1'");
  for (const char* h : {"hst_a", "hst_b", "hst_c"})
    if (h != host) Heartbeat(h);
  clock_.Advance(31s);
  // The leader began listening 10 s ago (an outage just ended): nothing is judged yet.
  EXPECT_EQ(FailSilentHosts(*conn_, fc_, kT0 + 21s), 0);
  EXPECT_EQ(Field("SELECT state FROM instances WHERE id = 'ins_1'"), "running");
  // Listening all along: the host is down and its instance failed, its GPUs freed.
  for (const char* h : {"hst_a", "hst_b", "hst_c"})
    if (h != host) Heartbeat(h);
  EXPECT_EQ(FailSilentHosts(*conn_, fc_, kT0 - 1h), 1);
  EXPECT_EQ(Field("SELECT state || '/' || end_reason FROM instances WHERE id = 'ins_1'"), "failed/host_down");
  EXPECT_EQ(Field("SELECT health || '/' || down_reason FROM hosts WHERE id = $1", host), "down/silent");
  EXPECT_EQ(Field("SELECT count(*) FROM gpu_allocations"), "0");
  EXPECT_EQ(Field("SELECT count(*) FROM gpu_allocation_history WHERE instance_id = 'ins_1' AND released_at IS NOT NULL"), "8");
  // A heartbeat brings it back up.
  Heartbeat(host);
  EXPECT_EQ(Field("SELECT health FROM hosts WHERE id = $1", host), "up");
}

TEST_F(FleetRules, MostOfARegionSilentBrakesInsteadOfFailing) {
  Launch("ins_1", 8, "on_demand");
  Launch("ins_2", 8, "on_demand");
  clock_.Advance(31s);  // all three hosts silent together
  EXPECT_EQ(FailSilentHosts(*conn_, fc_, kT0 - 1h), 0);
  EXPECT_EQ(Field("SELECT count(*) FROM hosts WHERE health = 'down' AND down_reason = 'mass_silence'"), "3");
  EXPECT_EQ(Field("SELECT count(*) FROM instances WHERE state = 'running'"), "2");
  // Their instances are not failed as unreported either, while their hosts are down.
  clock_.Advance(120s);
  EXPECT_EQ(FailUnreportedInstances(*conn_, fc_, kT0 - 1h), 0);
  EXPECT_EQ(Field("SELECT count(*) FROM instances WHERE state = 'running'"), "2");
}

TEST_F(FleetRules, AnUnreportedInstanceIsFailedOnlyAfterTheGraceOfHeardTime) {
  Launch("ins_1", 1, "on_demand");
  const std::string host = Field("SELECT host_id FROM instances WHERE id = 'ins_1'");
  clock_.Advance(61s);
  Heartbeat(host);  // the host is alive but no longer reports the instance
  EXPECT_EQ(FailUnreportedInstances(*conn_, fc_, kT0 + 30s), 0);  // listening for 31 s only
  EXPECT_EQ(FailUnreportedInstances(*conn_, fc_, kT0 - 1h), 1);
  EXPECT_EQ(Field("SELECT state || '/' || end_reason FROM instances WHERE id = 'ins_1'"), "failed/lost");
}

// Placement counts as the instance's first report, stamped by the same clock that judges the
// grace: an instance just placed is not "unreported" however the database's clock differs.
TEST_F(FleetRules, AnInstanceJustPlacedIsGivenItsGraceByTheClock) {
  InTransaction(*conn_, [&](pqxx::work& tx) {
    tx.exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state) "
            "VALUES ('ins_p', 'ten_t', 'h100.x', 'H100-80GB', 1, 'us-east', 'on_demand', 'pending')");
    const auto pool = LoadPool(tx, "us-east", "H100-80GB", true);
    ApplyPlacement(tx, fc_, "ins_p", PlanPlacement(pool, 1, Market::kOnDemand));
  });
  EXPECT_EQ(Field("SELECT last_reported_at = $1::timestamptz FROM instances WHERE id = 'ins_p'", FormatTime(kT0)), "t");
  clock_.Advance(59s);
  EXPECT_EQ(FailUnreportedInstances(*conn_, fc_, kT0 - 1h), 0);
  EXPECT_EQ(Field("SELECT state FROM instances WHERE id = 'ins_p'"), "provisioning");
  clock_.Advance(2s);  // past the 60 s grace without a word from its host
  EXPECT_EQ(FailUnreportedInstances(*conn_, fc_, kT0 - 1h), 1);
  EXPECT_EQ(Field("SELECT state || '/' || end_reason FROM instances WHERE id = 'ins_p'"), "failed/lost");
}

TEST_F(FleetRules, APreemptionEndsAtItsDeadlineByTheClock) {
  Launch("ins_s", 2, "spot");
  InTransaction(*conn_, [&](pqxx::work& tx) {
    LockHost(tx, Host(tx, "ins_s"));
    PreemptSpot(tx, fc_, "ins_s", "reservation");
  });
  EXPECT_EQ(Field("SELECT preempt_at = $1::timestamptz FROM instances WHERE id = 'ins_s'", FormatTime(kT0 + 120s)), "t");
  clock_.Advance(119s);
  EXPECT_EQ(FinishPreemptions(*conn_, fc_), 0);
  clock_.Advance(1s);
  EXPECT_EQ(FinishPreemptions(*conn_, fc_), 1);
  EXPECT_EQ(Field("SELECT state || '/' || end_reason FROM instances WHERE id = 'ins_s'"), "terminated/preempted");
  EXPECT_EQ(Field("SELECT ended_at = $1::timestamptz FROM instances WHERE id = 'ins_s'", FormatTime(kT0 + 120s)), "t");
}

TEST_F(FleetRules, TheAllocationHistoryKeepsWhoHeldEachGpuWhen) {
  Launch("ins_1", 8, "on_demand");
  const std::string host = Field("SELECT host_id FROM instances WHERE id = 'ins_1'");
  InTransaction(*conn_, [&](pqxx::work& tx) {
    LockHost(tx, host);
    EndInstance(tx, "ins_1", InstanceState::kTerminated, "terminated", clock_.Now());
  });
  Launch("ins_2", 8, "on_demand");
  // The same GPUs may have been held by both, one after the other, never at once.
  EXPECT_EQ(Field("SELECT count(*) FROM gpu_allocation_history WHERE instance_id = 'ins_1' AND released_at IS NOT NULL"), "8");
  EXPECT_EQ(Field("SELECT count(*) FROM gpu_allocation_history WHERE instance_id = 'ins_2' AND released_at IS NULL"), "8");
  pqxx::work tx(*conn_);
  EXPECT_THROW(tx.exec_params("INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at) "
                              "SELECT 'ins_1', host_id, gpu_index, now() FROM gpu_allocations LIMIT 1"),
               pqxx::unique_violation);  // a second open allocation of one GPU
}

TEST_F(FleetRules, RepricingPreemptsSpotBidsBelowTheNewPrice) {
  Launch("ins_cheap", 1, "spot");
  {
    pqxx::work tx(*conn_);
    tx.exec("UPDATE instances SET max_price_micros = 100000 WHERE id = 'ins_cheap'");
    tx.exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) "
            "VALUES ('H100-80GB', 'on_demand', 2490000, '2020-01-01')");
    tx.commit();
  }
  EXPECT_EQ(Reprice(*conn_, fc_), 1);
  EXPECT_EQ(Field("SELECT state || '/' || preempt_reason FROM instances WHERE id = 'ins_cheap'"), "preempting/price");
  EXPECT_EQ(Reprice(*conn_, fc_), 0);  // the price has reached its target: nothing new
}

// A registration storm into one pool marks it once; the leader's pass prices it once and takes the
// mark, so N registrations cost one whole-pool pass per tick, not N behind the pool's locks.
TEST_F(FleetRules, ARegistrationStormMarksItsPoolOnceAndTheLeaderPricesItOnce) {
  InTransaction(*conn_, [&](pqxx::work& tx) {
    tx.exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) "
            "VALUES ('H100-80GB', 'on_demand', 2490000, '2020-01-01')");
  });
  for (int i = 0; i < 200; ++i)
    InTransaction(*conn_, [&](pqxx::work& tx) {
      AddHost(tx, "hst_s" + std::to_string(i), "eu-storm");
      MarkPoolToReprice(tx, "eu-storm", "H100-80GB");
    });
  EXPECT_EQ(Field("SELECT count(*) FROM pools_to_reprice"), "1");
  EXPECT_EQ(Field("SELECT count(*) FROM spot_prices WHERE region = 'eu-storm'"), "0");
  EXPECT_EQ(RepriceMarkedPools(*conn_, fc_), 1);
  EXPECT_EQ(Field("SELECT count(*) || ' ' || min(price_micros_per_gpu_hour) FROM spot_prices WHERE region = 'eu-storm'"),
            "1 747000");  // an idle pool: 70 % off $2.49
  EXPECT_EQ(Field("SELECT count(*) FROM pools_to_reprice"), "0");
  EXPECT_EQ(RepriceMarkedPools(*conn_, fc_), 0);  // nothing marked: nothing done
}
