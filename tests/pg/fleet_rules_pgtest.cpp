// The fleet's rules against a real PostgreSQL, driven by a fake clock: silence, unreported
// instances, preemption deadlines, placement and the allocation history, without HTTP or sleeps.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <thread>

#include "provisioning/fleet.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
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
  void AddHost(pqxx::work& tx, const std::string& id, const std::string& region, int gpus = 8) {
    tx.exec_params("INSERT INTO hosts (id, hostname, region, zone, gpu_model, gpu_count, token_hash, last_heartbeat) "
                   "VALUES ($1, $1, $2, 'a', 'H100-80GB', $4, 'x', $3::timestamptz)",
                   id, region, FormatTime(kT0), gpus);
    for (int g = 0; g < gpus; ++g)
      tx.exec_params("INSERT INTO gpus (host_id, gpu_index, uuid, model, memory_bytes) VALUES ($1, $2, $3, 'H100-80GB', 1)",
                     id, g, id + "-" + std::to_string(g));
  }
  // An instance placed by the real rules (as LaunchInstance places: the pool's lock and counts,
  // then PlanNewInstance and ApplyPlacement), then running.
  std::string Launch(const std::string& id, int gpus, const std::string& market) {
    InTransaction(*conn_, [&](pqxx::work& tx) {
      Place(tx, id, gpus, market);
      RecordHeartbeat(tx, Host(tx, id), "test", {{id, "running"}}, clock_.Now());
    });
    return id;
  }
  void Place(pqxx::work& tx, const std::string& id, int gpus, const std::string& market,
             const std::string& region = "us-east") {
    LockPool(tx, region, "H100-80GB");
    const PoolState counts = LoadPoolCounts(tx, region, "H100-80GB");
    const PlacementPlan plan = PlanNewInstance(tx, counts, PlacementNeeds{gpus, *ParseMarket(market)});
    tx.exec_params("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state) "
                   "VALUES ($1, 'ten_t', 'h100.x', 'H100-80GB', $2, $3, $4, 'pending')",
                   id, gpus, region, market);
    ApplyPlacement(tx, fc_, id, plan);
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

// A pool's total is kept as its hosts change (migrations/0025_keep_pool_capacity.sql), not added up
// from every host at each launch. Whatever changes a host (registering, going down and up, draining,
// disabling, growing, moving pools, leaving) and whether or not the leader has folded the changes
// yet, the kept total is the sum over the hosts, and the fold leaves nothing behind.
TEST_F(FleetRules, APoolsKeptTotalIsTheSumOverItsHostsFoldedOrNot) {
  const auto sum_over_hosts = [&](const std::string& region) {
    return std::stoll(Field("SELECT coalesce(sum(gpu_count) FILTER (WHERE health = 'up' AND state <> 'disabled'), 0) "
                            "FROM hosts WHERE region = $1 AND gpu_model = 'H100-80GB'",
                            region));
  };
  const auto kept = [&](const std::string& region) {
    pqxx::work tx(*conn_);
    return LoadPoolCounts(tx, region, "H100-80GB").total;
  };
  const auto check = [&](const std::string& what) {
    for (const char* region : {"us-east", "eu-keep"}) {
      EXPECT_EQ(kept(region), sum_over_hosts(region)) << what << " in " << region << ", before the fold";
    }
    FoldPoolCapacity(*conn_);
    EXPECT_EQ(Field("SELECT count(*) FROM pool_capacity_changes"), "0") << what;
    for (const char* region : {"us-east", "eu-keep"}) {
      EXPECT_EQ(kept(region), sum_over_hosts(region)) << what << " in " << region << ", after the fold";
    }
  };
  check("three hosts");
  EXPECT_EQ(kept("us-east"), 24);
  InTransaction(*conn_, [&](pqxx::work& tx) {
    for (int i = 0; i < 5; ++i) AddHost(tx, "hst_k" + std::to_string(i), "eu-keep", 4);
  });
  EXPECT_EQ(kept("eu-keep"), 20);
  check("five hosts registered");
  const std::vector<std::pair<std::string, std::string>> changes = {
      {"a host down", "UPDATE hosts SET health = 'down', down_reason = 'silent' WHERE id = 'hst_k0'"},
      {"heartbeats that change nothing", "UPDATE hosts SET health = 'up', last_heartbeat = now() WHERE id <> 'hst_k0'"},
      {"it comes back", "UPDATE hosts SET health = 'up', down_reason = NULL WHERE id = 'hst_k0'"},
      {"draining (still counted)", "UPDATE hosts SET state = 'draining' WHERE id = 'hst_k1'"},
      {"disabled", "UPDATE hosts SET state = 'disabled' WHERE id IN ('hst_k1', 'hst_a')"},
      {"disabled and down, then enabled", "UPDATE hosts SET health = 'down', down_reason = 'silent', state = 'active' "
                                          "WHERE id = 'hst_k2'"},
      {"more GPUs", "UPDATE hosts SET gpu_count = 8 WHERE id = 'hst_k3'"},
      {"moved to another pool", "UPDATE hosts SET region = 'us-east' WHERE id = 'hst_k4'"},
      {"gone", "DELETE FROM gpus WHERE host_id = 'hst_b'; DELETE FROM hosts WHERE id = 'hst_b'"},
  };
  for (const auto& [what, sql] : changes) {
    InTransaction(*conn_, [&](pqxx::work& tx) { tx.exec(sql); });
    check(what);
  }
  EXPECT_EQ(kept("eu-keep"), 4 + 8);  // k0 back up, k3 grown; k1 disabled, k2 down, k4 moved
  EXPECT_EQ(kept("us-east"), 8 + 4);  // hst_c and k4; hst_a disabled, hst_b gone
  // A change not yet committed when the leader folds is folded by the next pass, never lost.
  {
    pqxx::work open(*conn_);
    open.exec("UPDATE hosts SET state = 'active' WHERE id = 'hst_a'");
    auto other = OpenSession({db_.dsn(), "spillway-test", 3000ms, 30000ms});
    FoldPoolCapacity(*other);
    open.commit();
    EXPECT_EQ(kept("us-east"), 8 + 4 + 8);
    FoldPoolCapacity(*other);
    EXPECT_EQ(kept("us-east"), 8 + 4 + 8);
    EXPECT_EQ(Field("SELECT count(*) FROM pool_capacity_changes"), "0");
  }
}

// Placement without the pool in memory (the pool's counts and a best-fit host chosen in SQL) chooses
// what the whole pool's plan chooses, host and GPUs, for every need: CUDA, ports, claims of pending
// instances, GPUs in use, draining and down hosts, and hosts with nothing on them of 4 and 8 GPUs
// (which best fit takes from an index rather than weighing each). And the counts are the whole pool's.
TEST_F(FleetRules, PlacementFromThePoolsCountsChoosesWhatTheWholePoolWould) {
  InTransaction(*conn_, [&](pqxx::work& tx) {
    struct H { const char* id; const char* cuda; int ports; const char* state; const char* health; int gpus = 8; };
    for (const H& h : {H{"hst_m1", "12.4", 2, "active", "up"}, H{"hst_m2", "12.8", 0, "active", "up"},
                       H{"hst_m3", "13.0", 3, "active", "up"}, H{"hst_m4", "12.8", 4, "draining", "up"},
                       H{"hst_m5", "13.0", 4, "active", "down"}, H{"hst_m6", "12.10", 10, "active", "up"},
                       H{"hst_m7", nullptr, 1, "active", "up"}, H{"hst_m8", "12.8", 2, "active", "up", 4},
                       H{"hst_m0", "12.4", 0, "active", "up", 4}, H{"hst_m9", "13.0", 4, "active", "up"},
                       H{"hst_ma", "13.0", 1, "active", "down", 4}}) {
      AddHost(tx, h.id, "eu-mix", h.gpus);
      tx.exec_params("UPDATE hosts SET cuda_version = $2, state = $3, health = $4, "
                     "port_range_from = CASE WHEN $5 > 0 THEN 20000 END, port_range_to = CASE WHEN $5 > 0 THEN 19999 + $5 END, "
                     "down_reason = CASE WHEN $4 = 'down' THEN 'silent' END "
                     "WHERE id = $1",
                     h.id, h.cuda ? std::optional<std::string>(h.cuda) : std::nullopt, h.state, h.health, h.ports);
    }
    // In use: 5 GPUs and a port on m1, 6 on m2, 1 on m4 (draining), 2 on m6; 4 of m3 claimed by a
    // pending on-demand instance waiting for spot to leave.
    auto hold = [&](const std::string& id, const std::string& host, int gpus, const std::string& state, int port) {
      tx.exec_params("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id) "
                     "VALUES ($1, 'ten_t', 'h100.x', 'H100-80GB', $2, 'eu-mix', 'on_demand', $3, $4)",
                     id, gpus, state, host);
      if (state != "pending")
        tx.exec_params("INSERT INTO gpu_allocations (host_id, gpu_index, instance_id) "
                       "SELECT $1, i, $2 FROM generate_series(0, $3 - 1) i", host, id, gpus);
      if (port)
        tx.exec_params("INSERT INTO instance_ports (instance_id, internal_port, protocol, host_id, external_port) "
                       "VALUES ($1, 22, 'tcp', $2, $3)", id, host, port);
    };
    hold("ins_m1", "hst_m1", 5, "running", 20000);
    hold("ins_m2", "hst_m2", 6, "running", 0);
    hold("ins_m4", "hst_m4", 1, "running", 0);
    hold("ins_m6", "hst_m6", 2, "running", 0);
    hold("ins_m3", "hst_m3", 4, "pending", 0);
  });
  pqxx::work tx(*conn_);
  const PoolState whole = LoadPool(tx, "eu-mix", "H100-80GB", false);
  LockPool(tx, "eu-mix", "H100-80GB");
  const PoolState counts = LoadPoolCounts(tx, "eu-mix", "H100-80GB");
  EXPECT_EQ(counts.total, whole.total);
  EXPECT_EQ(counts.total, 64);  // m5 and ma are down
  EXPECT_EQ(counts.draining_idle, whole.draining_idle);
  EXPECT_EQ(counts.draining_idle, 7);
  EXPECT_EQ(counts.on_demand, whole.on_demand);
  EXPECT_EQ(counts.largest_host, 8);
  EXPECT_EQ(counts.Spare(), whole.Spare());
  int placed = 0;
  for (int gpus : {1, 2, 3, 4, 5, 6, 8})
    for (const Market market : {Market::kOnDemand, Market::kSpot})
      for (const char* cuda : {"", "12.8", "12.10", "13.0"})
        for (int ports : {0, 1, 2, 3}) {
          const PlacementNeeds needs{gpus, market, *cuda ? std::optional<std::string>(cuda) : std::nullopt, ports};
          const std::string what = std::to_string(gpus) + " GPUs, " + ToString(market) + ", CUDA " + cuda + ", " +
                                   std::to_string(ports) + " ports";
          std::optional<PlacementPlan> want, got;
          try {
            want = PlanPlacement(whole, needs);
          } catch (const ApiError&) {
          }
          try {
            got = PlaceOnFreeGpus(tx, counts, needs);
          } catch (const ApiError&) {
            EXPECT_FALSE(want) << what << ": the counts refused what the whole pool places";
            continue;
          }
          if (!want || want->state != InstanceState::kProvisioning) {
            EXPECT_FALSE(got) << what << ": placed on " << got->host_id << " where the whole pool cannot place now";
            continue;
          }
          ASSERT_TRUE(got) << what << ": the whole pool places it on " << want->host_id;
          EXPECT_EQ(got->host_id, want->host_id) << what;
          EXPECT_EQ(got->gpu_indices, want->gpu_indices) << what;
          ++placed;
        }
  EXPECT_GT(placed, 40);  // the cases are not all refusals
}

// The read-only pages' view of a pool (the catalog's fits, capacity's hosts) from two aggregates is
// what the whole pool in memory says, host by host: free GPUs, claims of pending instances, spot
// holding GPUs (under notice or not), draining, disabled and down hosts.
TEST_F(FleetRules, APoolsViewFromAggregatesIsWhatTheWholePoolSays) {
  InTransaction(*conn_, [&](pqxx::work& tx) {
    struct H { const char* id; const char* state; const char* health; };
    for (const H& h : {H{"hst_v1", "active", "up"}, H{"hst_v2", "active", "up"}, H{"hst_v3", "active", "up"},
                       H{"hst_v4", "draining", "up"}, H{"hst_v5", "active", "down"}, H{"hst_v6", "disabled", "up"},
                       H{"hst_v7", "active", "up"}}) {
      AddHost(tx, h.id, "eu-view");
      tx.exec_params("UPDATE hosts SET state = $2, health = $3, down_reason = CASE WHEN $3 = 'down' THEN 'silent' END "
                     "WHERE id = $1",
                     h.id, h.state, h.health);
    }
    auto hold = [&](const std::string& id, const std::string& host, int gpus, const std::string& market,
                    const std::string& state) {
      tx.exec_params("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id) "
                     "VALUES ($1, 'ten_t', 'h100.x', 'H100-80GB', $2, 'eu-view', $3, $4, $5)",
                     id, gpus, market, state, host);
      if (state != "pending")
        tx.exec_params("INSERT INTO gpu_allocations (host_id, gpu_index, instance_id) "
                       "SELECT $1, i + coalesce((SELECT max(gpu_index) + 1 FROM gpu_allocations WHERE host_id = $1), 0), $2 "
                       "FROM generate_series(0, $3 - 1) i",
                       host, id, gpus);
    };
    hold("ins_v1a", "hst_v1", 3, "on_demand", "running");
    hold("ins_v1b", "hst_v1", 2, "spot", "running");
    hold("ins_v2a", "hst_v2", 4, "spot", "preempting");
    hold("ins_v2b", "hst_v2", 2, "spot", "provisioning");
    hold("ins_v3a", "hst_v3", 6, "on_demand", "pending");  // waiting for the spot below to leave
    hold("ins_v3b", "hst_v3", 5, "spot", "preempting");
    hold("ins_v4a", "hst_v4", 1, "on_demand", "running");
    hold("ins_v6a", "hst_v6", 2, "spot", "running");
    hold("ins_v7a", "hst_v7", 8, "on_demand", "running");
  });
  pqxx::work tx(*conn_);
  const PoolState whole = LoadPool(tx, "eu-view", "H100-80GB", false);
  const PoolView view = LoadPoolView(tx, "eu-view", "H100-80GB");
  EXPECT_EQ(view.hosts, static_cast<std::int64_t>(whole.hosts.size()));
  std::int64_t placeable = 0;
  for (const auto& h : whole.hosts) placeable += h.placeable;
  EXPECT_EQ(view.placeable_hosts, placeable);
  EXPECT_EQ(view.placeable_hosts, 4);
  EXPECT_EQ(view.counts.total, whole.total);
  EXPECT_EQ(view.counts.on_demand, whole.on_demand);
  EXPECT_EQ(view.counts.spot_active, whole.spot_active);
  EXPECT_EQ(view.counts.spot_leaving, whole.spot_leaving);
  EXPECT_EQ(view.counts.Spare(), whole.Spare());
  // Host by host, as the whole pool counts: free (less claims) alone, or with what spot holds.
  std::map<std::string, std::int64_t> spot_on;
  for (const auto& s : whole.spot) spot_on[s.host_id] += s.gpus;
  for (int gpus : {1, 2, 3, 4, 5, 6, 8}) {
    std::int64_t on_free = 0, preempting = 0;
    for (const auto& h : whole.hosts) {
      if (!h.placeable) continue;
      const std::int64_t free = std::max<std::int64_t>(0, h.FreeEffective());
      on_free += free / gpus;
      preempting += (free + h.leaving + spot_on[h.id]) / gpus;
    }
    EXPECT_EQ(view.FitsOnFree(gpus), on_free) << gpus << " GPUs";
    EXPECT_EQ(view.FitsPreemptingSpot(gpus), preempting) << gpus << " GPUs";
  }
  // v1: 3 free, 2 held by spot; v2: 2 free, 6 held by spot; v3: 5 held by spot and the other 3
  // promised to the pending instance (which needs 6); v7: none free. v4-v6 take nothing new.
  EXPECT_EQ(view.FitsOnFree(2), 1 + 1);
  EXPECT_EQ(view.FitsPreemptingSpot(4), 1 + 2 + 1);
}

// A pending on-demand instance waits on the host it claimed: placed there, on the GPUs spot gave
// back, once enough are free; planned again elsewhere in the pool once that host went away.
TEST_F(FleetRules, APendingInstanceGoesToItsClaimedHostOrElsewhereOnceThatHostIsGone) {
  InTransaction(*conn_, [&](pqxx::work& tx) {
    for (const char* h : {"hst_p1", "hst_p2"}) AddHost(tx, h, "eu-pend");
    tx.exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id) "
            "VALUES ('ins_spot', 'ten_t', 'h100.x', 'H100-80GB', 5, 'eu-pend', 'spot', 'preempting', 'hst_p1'), "
            "       ('ins_wait', 'ten_t', 'h100.x', 'H100-80GB', 6, 'eu-pend', 'on_demand', 'pending', 'hst_p1')");
    tx.exec("INSERT INTO gpu_allocations (host_id, gpu_index, instance_id) "
            "SELECT 'hst_p1', i, 'ins_spot' FROM generate_series(0, 4) i");
  });
  auto instance = [&](const std::string& id) {
    pqxx::work tx(*conn_);
    const auto r = tx.exec_params1(
        "SELECT state, coalesce(host_id, '') AS host, (SELECT coalesce(string_agg(gpu_index::text, ',' ORDER BY gpu_index), '') "
        "FROM gpu_allocations a WHERE a.instance_id = i.id) AS gpus FROM instances i WHERE id = $1",
        id);
    return r["state"].as<std::string>() + " " + r["host"].as<std::string>() + " " + r["gpus"].as<std::string>();
  };
  // 3 GPUs free of the 6 it needs: it waits, and takes nothing elsewhere meanwhile.
  EXPECT_EQ(PlacePending(*conn_, fc_), 0);
  EXPECT_EQ(instance("ins_wait"), "pending hst_p1 ");
  // The spot instance leaves: its host takes it, on the lowest free GPUs.
  InTransaction(*conn_, [&](pqxx::work& tx) {
    tx.exec("DELETE FROM gpu_allocations WHERE instance_id = 'ins_spot'");
    tx.exec("UPDATE instances SET state = 'terminated', end_reason = 'preempted', ended_at = now() WHERE id = 'ins_spot'");
  });
  EXPECT_EQ(PlacePending(*conn_, fc_), 1);
  EXPECT_EQ(instance("ins_wait"), "provisioning hst_p1 0,1,2,3,4,5");

  // Another waits on hst_p1 (2 GPUs, free there), but hst_p1 goes down first: hst_p2 takes it.
  InTransaction(*conn_, [&](pqxx::work& tx) {
    tx.exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id) "
            "VALUES ('ins_moved', 'ten_t', 'h100.x', 'H100-80GB', 2, 'eu-pend', 'on_demand', 'pending', 'hst_p1')");
    tx.exec("UPDATE hosts SET health = 'down', down_since = now(), down_reason = 'silent' WHERE id = 'hst_p1'");
  });
  EXPECT_EQ(PlacePending(*conn_, fc_), 1);
  EXPECT_EQ(instance("ins_moved"), "provisioning hst_p2 0,1");
}

// Launches into one pool from many connections at once never book a GPU twice nor more GPUs than
// the pool offers on-demand (24, less the 12 the operator reserved): they serialize on the pool's
// lock, not on every host's row.
TEST_F(FleetRules, ConcurrentLaunchesIntoOnePoolNeverOverbook) {
  InTransaction(*conn_, [&](pqxx::work& tx) { SetReservation(tx, fc_, "us-east", "H100-80GB", 12); });
  constexpr int kThreads = 6, kEach = 6;  // 36 one-GPU launches for 12 GPUs
  std::atomic<int> placed{0}, refused{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto conn = OpenSession({db_.dsn(), "spillway-test", 3000ms, 30000ms});
      for (int i = 0; i < kEach; ++i) {
        try {
          InTransaction(*conn, [&](pqxx::work& tx) {
            Place(tx, "ins_c" + std::to_string(t) + "_" + std::to_string(i), 1, "on_demand");
          });
          ++placed;
        } catch (const ApiError& e) {
          (e.status == 409 ? refused : other)++;
        } catch (const std::exception& e) {
          ADD_FAILURE() << e.what();
          ++other;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(placed.load(), 12);
  EXPECT_EQ(refused.load(), 24);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(Field("SELECT count(*) || ' ' || count(DISTINCT (host_id, gpu_index)) FROM gpu_allocations"), "12 12");
}
