// Metering end to end with real processes: simulated agents sample every GPU, spool, ship; the
// apiserver stores each sample once. An instance is metered for the time it ran, to within the
// agent's observation; kill -9 of the agent or of the apiserver loses nothing recorded and stores
// nothing twice: per GPU, samples never overlap, and the only gaps are while the agent was dead.
#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "core/clock.hpp"
#include "tests/e2e/fleet_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

struct GpuTiling {
  std::int64_t samples = 0, overlaps = 0, covered_ms = 0, gap_ms = 0, span_ms = 0;
};

}  // namespace

class Metering : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDb>();
    auto env = FastFleetEnv();
    env["SPILLWAY_AGENT_SAMPLE_INTERVAL"] = "500ms";
    env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "300ms";
    server_ = std::make_unique<ApiServer>(db_->dsn(), env);
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
    tenant_ = fleet_->NewTenant("customer", 8);
    member_ = fleet_->NewKey(tenant_, "member");
  }
  // One value of a query (NULL as 0); `args` are its $1, $2, … parameters.
  template <class... Args>
  std::int64_t Scalar(const std::string& sql, const Args&... args) {
    auto c = db_->Connect();
    pqxx::nontransaction tx(*c);
    const auto f = tx.exec_params(sql, args...).at(0).at(0);
    return f.is_null() ? 0 : f.template as<std::int64_t>();
  }
  // How the samples of each GPU lie on the time line, first to last.
  std::vector<GpuTiling> Tiling() {
    auto c = db_->Connect();
    pqxx::nontransaction tx(*c);
    std::vector<GpuTiling> out;
    GpuTiling cur;
    std::string key;
    std::int64_t prev_end = 0, first_start = 0;
    for (const auto& r : tx.exec(
             "SELECT host_id || '/' || gpu_index AS k, (extract(epoch FROM ts) * 1000)::bigint AS ts_ms, interval_ms "
             "FROM usage_samples ORDER BY host_id, gpu_index, ts")) {
      const std::string k = r["k"].as<std::string>();
      const std::int64_t end = r["ts_ms"].as<std::int64_t>(), start = end - r["interval_ms"].as<std::int64_t>();
      if (k != key) {
        if (!key.empty()) out.push_back(cur);
        cur = {};
        key = k;
        first_start = start;
        prev_end = start;
      }
      ++cur.samples;
      if (start < prev_end) ++cur.overlaps;
      else cur.gap_ms += start - prev_end;
      cur.covered_ms += end - start;
      prev_end = std::max(prev_end, end);
      cur.span_ms = prev_end - first_start;
    }
    if (!key.empty()) out.push_back(cur);
    return out;
  }
  std::string Launch() {
    const auto r = fleet_->Call("POST", "/v1/instances", member_,
                                R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})");
    EXPECT_EQ(r.status, 201) << r.body;
    return Str(Json(r), "id");
  }
  // An agent simulating `hosts` hosts of 2 GPUs in eu-north, once the pool has them all; null if
  // they never registered.
  std::unique_ptr<Process> StartHosts(int hosts, std::vector<std::string> extra = {}) {
    auto agent = fleet_->StartAgent("eu-north", "H100-80GB", hosts, 2, std::move(extra));
    if (!WaitFor([&] { return fleet_->PoolInt("eu-north", "H100-80GB", "total_gpus") == 2 * hosts; }, 20s))
      return nullptr;
    return agent;
  }
  // The value of a counter or gauge the agent's --admin-listen serves (its one host's series); -1
  // when it is not there.
  static double AgentCounter(int admin_port, const std::string& name) {
    const auto m = Http(admin_port, "GET", "/metrics").body;
    const auto at = m.find("\n" + name + "{hostname=");
    const auto value = at == std::string::npos ? std::string::npos : m.find("} ", at);
    return value == std::string::npos ? -1 : std::stod(m.substr(value + 2));
  }
  // A launched instance once it runs; "" if it never did.
  std::string LaunchRunning() {
    const std::string id = Launch();
    return fleet_->WaitState(member_, id, "running") ? id : "";
  }
  // Waits until the agent's spool is drained: the stored samples stop changing.
  void WaitShipped() {
    std::int64_t last = -1;
    WaitFor(
        [&] {
          const std::int64_t n = Scalar("SELECT count(*) FROM usage_samples");
          const bool still = n == last;
          last = n;
          return still;
        },
        20s);
  }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<ApiServer> server_;
  std::unique_ptr<Fleet> fleet_;
  std::string tenant_, member_;
};

TEST_F(Metering, AnInstanceIsMeteredForTheTimeItRanAndIdleGpusToo) {
  const int admin_port = FreePort();
  auto agent = fleet_->StartAgent("eu-north", "H100-80GB", 1, 2,
                                  {"--admin-listen", "127.0.0.1:" + std::to_string(admin_port)});
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("eu-north", "H100-80GB", "total_gpus") == 2; }, 20s));
  {  // the simulated host says what it offers
    const auto hosts = Json(fleet_->Call("GET", "/v1/hosts?region=eu-north", fleet_->operator_key));
    const auto& h = hosts.at("data").as_array().at(0);
    EXPECT_TRUE(h.at("simulated").as_bool());
    EXPECT_EQ(Str(h, "cuda_version"), "12.8");
    EXPECT_EQ(h.at("port_range").at("from").as_int64(), 20000);
  }
  const std::string id = Launch();
  ASSERT_TRUE(fleet_->WaitState(member_, id, "running"));
  std::this_thread::sleep_for(3s);
  ASSERT_EQ(fleet_->Call("DELETE", "/v1/instances/" + id, member_).status, 200);
  ASSERT_TRUE(fleet_->WaitState(member_, id, "terminated"));
  std::this_thread::sleep_for(1500ms);  // a tick or two past the end
  WaitShipped();
  const auto inst = fleet_->Instance(member_, id);
  const std::int64_t ran =
      EpochMs(*ParseTime(Str(inst, "ended_at"))) - EpochMs(*ParseTime(Str(inst, "started_at")));
  const std::int64_t metered = Scalar("SELECT sum(interval_ms) FROM usage_samples WHERE instance_id = $1", id);
  // The agent meters what it saw running; the server's lifecycle is when it heard so. They agree
  // to within the agent's look (every 200 ms) and a heartbeat's trip.
  EXPECT_NEAR(metered, ran, 300) << "ran " << ran << " ms, metered " << metered << " ms";
  RecordProperty("ran_ms", std::to_string(ran));
  RecordProperty("metered_ms", std::to_string(metered));
  EXPECT_GT(Scalar("SELECT count(*) FROM usage_samples WHERE instance_id IS NULL"), 0);  // idle GPUs sampled
  for (const auto& g : Tiling()) {
    EXPECT_EQ(g.overlaps, 0);
    EXPECT_LE(g.covered_ms, g.span_ms);
    EXPECT_LE(g.gap_ms, 10);  // the agent ran throughout: no time left out
  }
  EXPECT_EQ(Scalar("SELECT count(*) FROM host_watermarks"), 1);

  // The customer reads it from the rollups: GPU-hours as decimal strings, and a coverage of 1
  // once its host's samples are folded past the instance's end.
  boost::json::value usage;
  ASSERT_TRUE(WaitFor(
      [&] {
        usage = Json(fleet_->Call("GET", "/v1/usage", member_));
        const auto& list = usage.at("instances").as_array();
        return list.size() == 1 && !list[0].at("complete_through").is_null() &&
               *ParseTime(Str(list[0], "complete_through")) >= *ParseTime(Str(inst, "ended_at"));
      },
      10s))
      << usage;
  const auto& mine = usage.at("instances").as_array().at(0);
  // Six places, rounded half-even as on invoices, in whole numbers: a binary fraction cannot hold a
  // tie such as 3,087 ms = 0.0008575 h, and printf would round it as it happens to be stored.
  std::int64_t micro_hours = metered * 10 / 36;
  if (const std::int64_t rest = metered * 10 % 36; rest > 18 || (rest == 18 && micro_hours % 2 == 1)) ++micro_hours;
  char expected[32];
  std::snprintf(expected, sizeof expected, "%lld.%06lld", static_cast<long long>(micro_hours / 1'000'000),
                static_cast<long long>(micro_hours % 1'000'000));
  EXPECT_EQ(Str(mine, "gpu_hours"), expected);
  EXPECT_NEAR(mine.at("coverage").as_double(), 1.0, 0.1) << usage;
  // Against the time it held its GPU (from placement, before it ran): never above 1.
  EXPECT_LE(mine.at("held_coverage").as_double(), 1.0) << usage;
  EXPECT_GT(mine.at("held_coverage").as_double(), 0.7) << usage;
  EXPECT_GE(Str(mine, "held_gpu_hours"), Str(mine, "gpu_hours")) << usage;  // same width: compares as numbers
  EXPECT_FALSE(usage.at("usage_complete_through").is_null());
  EXPECT_GE(usage.at("data").as_array().size(), 1u);
  EXPECT_EQ(Str(usage.at("data").as_array().at(0), "instance_id"), id);
  // Another tenant's usage is not there for a member to see; operators see the pools.
  const std::string other = fleet_->NewTenant("other", 1);
  EXPECT_EQ(fleet_->Call("GET", "/v1/usage?tenant_id=" + other, member_).status, 404);
  EXPECT_EQ(fleet_->Call("GET", "/v1/usage?granularity=week", member_).status, 400);
  EXPECT_EQ(fleet_->Call("GET", "/v1/usage", fleet_->admin).status, 400);  // which tenant?
  const auto pools = Json(fleet_->Call("GET", "/v1/fleet/usage?region=eu-north", fleet_->operator_key));
  ASSERT_GE(pools.at("data").as_array().size(), 1u) << pools;
  const auto& pool = pools.at("data").as_array().at(0);
  EXPECT_EQ(Str(pool, "gpu_model"), "H100-80GB");
  EXPECT_NE(Str(pool, "allocated_gpu_hours"), "0.000000");
  EXPECT_NE(Str(pool, "idle_gpu_hours"), "0.000000");
  EXPECT_EQ(fleet_->Call("GET", "/v1/fleet/usage", member_).status, 403);
  // The agent's own signals.
  EXPECT_EQ(Http(admin_port, "GET", "/healthz").status, 200);
  const auto agent_metrics = Http(admin_port, "GET", "/metrics").body;
  EXPECT_NE(agent_metrics.find("# TYPE spillway_agent_batches_shipped_total counter"), std::string::npos) << agent_metrics;
  EXPECT_NE(agent_metrics.find("spillway_agent_spool_unsent_samples{hostname="), std::string::npos);
  const double shipped = AgentCounter(admin_port, "spillway_agent_batches_shipped_total");
  ASSERT_GE(shipped, 0) << agent_metrics;
  EXPECT_GT(shipped, 3) << agent_metrics;
  EXPECT_GT(Scalar("SELECT count(*) FROM ingest_batches"), 3) << agent->Stderr() << server_->process().Stderr();
}

TEST_F(Metering, KillNineOfTheAgentOrTheApiserverLosesNothingAndStoresNothingTwice) {
  auto agent = StartHosts(2);
  ASSERT_TRUE(agent);
  const std::string id = LaunchRunning();
  ASSERT_FALSE(id.empty());
  std::this_thread::sleep_for(1500ms);

  // An agent started again on the same state directory, and the moment it is sure to be metering:
  // its admin listener opens only after every host's meter has started, so the time from the old
  // agent's end to here bounds what no agent could have observed (start-up included, which on a
  // busy CI machine under ASan is a few hundred milliseconds).
  const auto restart = [&](std::unique_ptr<Process>& a) {
    const int admin = FreePort();
    a = fleet_->StartAgent("eu-north", "H100-80GB", 2, 2, {"--admin-listen", "127.0.0.1:" + std::to_string(admin)});
    EXPECT_TRUE(WaitFor([&] { return Http(admin, "GET", "/healthz").status == 200; }, 20s)) << a->Stderr();
    return NowMs();
  };

  // (b) The agent killed mid-whatever, and started again.
  const auto killed_at = NowMs();
  ASSERT_EQ(agent->Stop(SIGKILL), 128 + SIGKILL);
  const auto restarted_at = restart(agent);
  std::this_thread::sleep_for(1500ms);

  // (a) The apiserver killed while the agents ship; they keep sampling and catch up after.
  ASSERT_EQ(server_->process().Stop(SIGKILL), 128 + SIGKILL);
  std::this_thread::sleep_for(2s);
  server_->Restart();
  ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
  std::this_thread::sleep_for(2s);
  const auto stopped_at = NowMs();
  ASSERT_EQ(agent->Stop(SIGTERM), 0);  // a clean stop records its last stretch too
  const auto started_again_at = restart(agent);  // and ships it once up again
  std::this_thread::sleep_for(1500ms);
  WaitShipped();

  const auto tiling = Tiling();
  ASSERT_EQ(tiling.size(), 4u);
  const std::int64_t dead_ms = EpochMs(restarted_at) - EpochMs(killed_at) + EpochMs(started_again_at) -
                               EpochMs(stopped_at);
  for (const auto& g : tiling) {
    EXPECT_EQ(g.overlaps, 0) << "a millisecond of a GPU stored twice";
    EXPECT_LE(g.covered_ms, g.span_ms);
    // Time is missing only while no agent ran (and the tick the killed one was in: 500 ms), never
    // while the apiserver was down: those samples waited in the spool.
    EXPECT_LE(g.gap_ms, dead_ms + 500 + 100) << "samples lost: " << g.gap_ms << " ms missing, agents down for "
                                             << dead_ms << " ms";
  }
  EXPECT_EQ(Scalar("SELECT count(*) FROM (SELECT 1 FROM usage_samples GROUP BY host_id, gpu_index, ts "
                   "HAVING count(*) > 1) d"),
            0);
  EXPECT_GT(Scalar("SELECT sum(interval_ms) FROM usage_samples WHERE instance_id = $1", id), 3000);
}

// A host cut off from the control plane (frozen here) has its instance failed for its silence and
// the GPU taken back, while the agent, hearing nothing, still attributes the GPU to it. When it is
// heard again, the server refuses those samples (the instance did not hold the GPU then) but lists
// them; the agent sends the batch again with them unattributed. Nothing is quarantined, nothing
// is lost, and the instance is metered only while it held the GPU.
TEST_F(Metering, AHostCutOffWhileItsInstanceFailsShipsThatTimeUnattributedNotQuarantined) {
  const int admin = FreePort();
  auto agent = StartHosts(1, {"--admin-listen", "127.0.0.1:" + std::to_string(admin)});
  ASSERT_TRUE(agent);
  const std::string id = LaunchRunning();
  ASSERT_FALSE(id.empty());
  std::this_thread::sleep_for(1500ms);
  ASSERT_EQ(::kill(agent->pid(), SIGSTOP), 0);
  const bool failed = fleet_->WaitState(member_, id, "failed", 20s);
  // Longer than the clock-skew tolerance (5 s) past the release, so that what the agent claims on
  // waking (up to 3 intervals back) lies beyond it.
  std::this_thread::sleep_for(7s);
  ASSERT_EQ(::kill(agent->pid(), SIGCONT), 0);
  ASSERT_TRUE(failed) << "the silent host's instance was not failed";
  EXPECT_TRUE(WaitFor([&] { return AgentCounter(admin, "spillway_agent_samples_unattributed_total") > 0; }, 20s))
      << "no sample was sent again unattributed\n" << Http(admin, "GET", "/metrics").body << agent->Stderr();
  EXPECT_TRUE(WaitFor([&] { return AgentCounter(admin, "spillway_agent_spool_unsent_samples") == 0; }, 20s));
  EXPECT_EQ(AgentCounter(admin, "spillway_agent_batches_quarantined_total"), 0);
  WaitShipped();
  // Metered to the instance only while it held the GPU (within the clock-skew tolerance); the time
  // after, on that GPU, is stored without an owner.
  EXPECT_EQ(Scalar("SELECT count(*) FROM usage_samples s WHERE s.instance_id = $1 AND s.ts > "
                   "(SELECT max(released_at) FROM gpu_allocation_history WHERE instance_id = $1) + interval '5 s'",
                   id),
            0);
  EXPECT_GT(Scalar("SELECT count(*) FROM usage_samples s JOIN gpu_allocation_history a ON a.instance_id = $1 "
                   "AND a.host_id = s.host_id AND a.gpu_index = s.gpu_index WHERE s.instance_id IS NULL "
                   "AND s.ts > a.released_at",
                   id),
            0);
  EXPECT_GT(Scalar("SELECT sum(interval_ms) FROM usage_samples WHERE instance_id = $1", id), 1000);
  for (const auto& g : Tiling()) EXPECT_EQ(g.overlaps, 0) << "a millisecond of a GPU stored twice";
}

// An agent restarted while the apiserver is down cannot be told anything: it meters at the interval
// and to the instances it was last told (last_known.json), so the instance's time in that outage
// is the instance's, not idle, once it is shipped.
TEST_F(Metering, AnAgentRestartedWhileTheApiserverIsDownMetersItsInstancesAsLastTold) {
  auto agent = StartHosts(1);
  ASSERT_TRUE(agent);
  const std::string id = LaunchRunning();
  ASSERT_FALSE(id.empty());
  std::this_thread::sleep_for(1s);
  ASSERT_EQ(server_->process().Stop(SIGKILL), 128 + SIGKILL);
  ASSERT_EQ(agent->Stop(SIGTERM), 0);  // the instance runs on
  agent = fleet_->StartAgent("eu-north", "H100-80GB", 1, 2);
  const auto from = NowMs();
  std::this_thread::sleep_for(3s);
  const auto to = NowMs();
  server_->Restart();
  ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
  std::this_thread::sleep_for(1500ms);
  WaitShipped();
  // On the instance's GPU, between the agent's restart (and one interval) and the apiserver's return.
  const std::string window =
      "FROM usage_samples s JOIN gpu_allocation_history a ON a.instance_id = $1 AND a.host_id = s.host_id "
      "AND a.gpu_index = s.gpu_index WHERE s.ts > to_timestamp($2::bigint / 1000.0) "
      "AND s.ts <= to_timestamp($3::bigint / 1000.0)";
  const auto begin_ms = EpochMs(from) + 600, end_ms = EpochMs(to);
  EXPECT_EQ(Scalar("SELECT coalesce(sum(s.interval_ms), 0) " + window + " AND s.instance_id IS NULL", id, begin_ms,
                   end_ms),
            0)
      << "the instance's GPU was metered idle while the agent could not reach the apiserver";
  EXPECT_GE(Scalar("SELECT coalesce(sum(s.interval_ms), 0) " + window + " AND s.instance_id = $1", id, begin_ms,
                   end_ms),
            1500);
  for (const auto& g : Tiling()) EXPECT_EQ(g.overlaps, 0) << "a millisecond of a GPU stored twice";
}

// (c) PostgreSQL restarts while hosts ship: batches meet 503s (or a lost connection), stay in the
// spools, and go in once the database is back: still no overlap, no gap.
TEST(MeteringDatabaseRestart, SamplesWaitInTheSpoolsAndGoInOnceEach) {
  OwnCluster pg;
  ASSERT_TRUE(pg.ok());
  ASSERT_TRUE(pg.Migrate());
  auto env = FastFleetEnv();
  env["SPILLWAY_AGENT_SAMPLE_INTERVAL"] = "300ms";
  env["SPILLWAY_DATABASE_CONNECT_TIMEOUT"] = "1s";
  ApiServer server(pg.dsn(), env);
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(pg.dsn(), server);
  auto agent = fleet.StartAgent("eu-north", "H100-80GB", 4, 2);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("eu-north", "H100-80GB", "total_gpus") == 8; }, 20s));
  std::this_thread::sleep_for(1500ms);
  ASSERT_TRUE(pg.Stop());
  std::this_thread::sleep_for(2s);
  ASSERT_TRUE(pg.Start());
  ASSERT_TRUE(server.WaitReady(30s)) << server.process().Stderr();
  // Every host has shipped everything it sampled until well after the database came back.
  const std::int64_t back = EpochMs(NowMs()) + 1000;
  auto conn = pqxx::connection(pg.dsn());
  ASSERT_TRUE(WaitFor(
      [&] {
        pqxx::nontransaction tx(conn);
        const auto f = tx.exec1("SELECT min((extract(epoch FROM sampled_through) * 1000)::bigint), count(*) "
                                "FROM host_watermarks");
        return f[1].as<int>() == 4 && !f[0].is_null() && f[0].as<std::int64_t>() >= back;
      },
      30s));
  pqxx::nontransaction tx(conn);
  // Per GPU: consecutive samples never overlap, and there is no hole while the agents ran.
  const auto r = tx.exec1(R"sql(
    SELECT count(*) FILTER (WHERE prev_end > ts - interval_ms * interval '1 ms') AS overlaps,
           coalesce(max(extract(epoch FROM (ts - interval_ms * interval '1 ms') - prev_end) * 1000), 0)::bigint AS max_gap_ms,
           count(DISTINCT (host_id, gpu_index)) AS gpus
    FROM (SELECT *, lag(ts) OVER (PARTITION BY host_id, gpu_index ORDER BY ts) AS prev_end FROM usage_samples) s)sql");
  EXPECT_EQ(r["overlaps"].as<std::int64_t>(), 0);
  EXPECT_LE(r["max_gap_ms"].as<std::int64_t>(), 50) << "samples lost while the database was down";
  EXPECT_EQ(r["gpus"].as<std::int64_t>(), 8);
}

TEST_F(Metering, AnAgentLeavesOutSamplesOfGpuTimeAlreadyStoredAndShipsTheRest) {
  const int admin = FreePort();
  auto agent = StartHosts(1, {"--admin-listen", "127.0.0.1:" + std::to_string(admin)});
  ASSERT_TRUE(agent);
  std::string host;
  {
    auto c = db_->Connect();
    host = pqxx::nontransaction(*c).exec1("SELECT id FROM hosts")[0].as<std::string>();
  }
  // A second of GPU 0's time a little ahead is stored already (sent once under other batch
  // numbers, say, from a state directory restored from a backup).
  const std::int64_t at = EpochMs(NowMs()) + 2000;
  {
    auto c = db_->Connect();
    pqxx::work tx(*c);
    tx.exec_params("INSERT INTO usage_samples VALUES (to_timestamp($2::bigint / 1000.0), $1, 0, NULL, 1000, 0, 0, 0, 0)",
                   host, at);
    tx.exec_params("UPDATE gpu_sample_marks SET stored_through = to_timestamp($2::bigint / 1000.0) "
                   "WHERE host_id = $1 AND gpu_index = 0",
                   host, at);
    tx.commit();
  }
  // The agent's batch over that second is refused with those samples listed; it sends it again
  // without them, and the rest of its time goes in.
  EXPECT_TRUE(WaitFor([&] { return AgentCounter(admin, "spillway_agent_samples_already_stored_total") > 0; }, 20s))
      << agent->Stderr();
  const std::int64_t stored_after = Scalar("SELECT count(*) FROM usage_samples WHERE ts > to_timestamp($1::bigint / 1000.0)", at);
  EXPECT_TRUE(WaitFor([&] {
    return Scalar("SELECT count(*) FROM usage_samples WHERE ts > to_timestamp($1::bigint / 1000.0)", at) > stored_after + 2;
  }, 20s));
  EXPECT_EQ(AgentCounter(admin, "spillway_agent_batches_quarantined_total"), 0);
  for (const auto& g : Tiling()) EXPECT_EQ(g.overlaps, 0);
}
