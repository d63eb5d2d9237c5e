// Prepaid balances and spend limits through the real apiserver and a simulated agent (README, "Cost
// controls"): a prepaid tenant's instance runs its credit down to zero and is stopped; a postpaid
// tenant's monthly limit stops it likewise and raising the limit lifts it. Each measures what was
// billed past zero (or past the limit) against the bound: one sample interval plus one rating
// interval of the burn rate.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <csignal>
#include <cstdio>
#include <map>
#include <sstream>

#include "billing/exact_amount.hpp"
#include "core/db.hpp"
#include "core/sql.hpp"
#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t kPriceMicros = 36'000'000;  // $36 an H100-hour: a cent a second
constexpr auto kSampleInterval = 1s, kRollupInterval = 1s;

// "0.123456" / "-0.010000" -> micro-dollars.
std::int64_t Micros(const std::string& s) {
  const bool neg = !s.empty() && s[0] == '-';
  const std::string t = neg ? s.substr(1) : s;
  const auto dot = t.find('.');
  std::string frac = dot == std::string::npos ? "" : t.substr(dot + 1);
  frac.resize(6, '0');
  const std::int64_t v = std::stoll(t.substr(0, dot)) * 1'000'000 + std::stoll(frac);
  return neg ? -v : v;
}

}  // namespace

class Spend : public ::testing::Test {
 protected:
  void SetUp() override {
    Start({{"SPILLWAY_BILLING_LOW_BALANCE_RUNWAY", "20s"}, {"SPILLWAY_BILLING_MIN_LAUNCH_RUNWAY", "5s"}}, "thrifty", false);
  }
  // The apiserver with `env` over the fast fleet's (samples and rating every second), a tenant, and a
  // 2-GPU host whose agent reaches the apiserver directly or, `partitionable`, through proxy_.
  void Start(const std::map<std::string, std::string>& more, const std::string& tenant_name, bool partitionable) {
    db_ = std::make_unique<TestDb>();
    conn_ = OpenSession({db_->dsn(), "spillway-test", 3000ms, 30000ms});
    Exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES ('H100-80GB', "
         "'on_demand', " + std::to_string(kPriceMicros) + ", '2020-01-01T00:00:00Z')");
    auto env = FastFleetEnv();
    env["SPILLWAY_AGENT_SAMPLE_INTERVAL"] = "1s";
    env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "1s";
    for (const auto& [k, v] : more) env[k] = v;
    server_ = std::make_unique<ApiServer>(db_->dsn(), env);
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    if (partitionable) proxy_ = std::make_unique<PartitionProxy>(server_->port());
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
    finance_ = fleet_->NewKey(fleet_->operator_tenant, "finance");
    tenant_ = fleet_->NewTenant(tenant_name, 4);
    member_ = fleet_->NewKey(tenant_, "member");
    agent_ = fleet_->StartAgent("eu-north", "H100-80GB", 1, 2, {}, proxy_ ? proxy_->port() : 0);
    ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("eu-north", "H100-80GB", "total_gpus") == 2; }, 20s));
  }
  void TearDown() override {
    agent_.reset();  // before the proxy it may talk through
    proxy_.reset();
  }
  void Exec(const std::string& sql) { ExecSql(*conn_, sql); }
  template <class... Params>
  std::string One(const std::string& sql, const Params&... params) { return SqlValue(*conn_, sql, params...); }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "") {
    return fleet_->Call(method, path, key, body);
  }
  HttpResponse Launch() {
    return Call("POST", "/v1/instances", member_, R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})");
  }
  boost::json::value Balance() { return Json(Call("GET", "/v1/billing/balance", member_)); }
  // Waits until the instance ended and everything it ran is rated (the tenant's rated total still for
  // three seconds); returns that total in µ$.
  std::int64_t SettledSpend(const std::string& instance) {
    EXPECT_TRUE(WaitFor([&] { return One("SELECT state FROM instances WHERE id = $1", instance) == "terminated"; }, 30s));
    return StillSpend();
  }
  // The month's spend in µ$ once the tenant's rated total has been still for three seconds (what
  // changes is what is measured: polled each second).
  std::int64_t StillSpend() {
    std::string last, now;
    for (int still = 0; still < 3;) {
      std::this_thread::sleep_for(1s);
      now = One("SELECT coalesce(sum(gpu_ms), 0) FROM usage_rated_hourly WHERE tenant_id = $1", tenant_);
      still = now == last ? still + 1 : 0;
      last = now;
    }
    return Micros(Str(Balance(), "spent_this_month"));
  }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<ApiServer> server_;
  std::unique_ptr<Fleet> fleet_;
  std::unique_ptr<PartitionProxy> proxy_;  // only where the host can be cut off
  std::unique_ptr<Process> agent_;
  std::string finance_, tenant_, member_;
};

TEST_F(Spend, APrepaidBalanceRunsDownToZeroAndItsInstancesStopWithABoundedOvershoot) {
  auto r = Call("PUT", "/v1/billing/tenants/" + tenant_ + "/mode", finance_, R"({"mode":"prepaid"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r), "mode"), "prepaid");
  EXPECT_EQ(Call("PUT", "/v1/billing/tenants/" + tenant_ + "/mode", member_, R"({"mode":"postpaid"})").status, 403);
  EXPECT_EQ(Call("PUT", "/v1/billing/tenants/" + tenant_ + "/mode", finance_, R"({"mode":"free"})").status, 422);
  // No credit: no launch, saying the balance and what the launch would burn.
  r = Launch();
  ASSERT_EQ(r.status, 402) << r.body;
  EXPECT_EQ(Str(Json(r).at("error"), "code"), "insufficient_funds");
  EXPECT_NE(r.body.find("$0.000000"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("$36.000000 an hour"), std::string::npos) << r.body;
  // Finance adds 30 seconds of it; bad money changes nothing.
  EXPECT_EQ(Call("POST", "/v1/billing/tenants/" + tenant_ + "/credits", finance_, R"({"amount":"-1","reason":"x"})").status, 422);
  EXPECT_EQ(Call("POST", "/v1/billing/tenants/" + tenant_ + "/credits", member_, R"({"amount":"1","reason":"x"})").status, 403);
  r = Call("POST", "/v1/billing/tenants/" + tenant_ + "/credits", finance_, R"({"amount":"0.30","reason":"trial"})");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(Str(Json(r).at("funds"), "balance"), "0.300000");
  EXPECT_EQ(One("SELECT count(*) FROM credit_ledger"), "1");
  EXPECT_THROW(Exec("UPDATE credit_ledger SET amount_cents = 1000000"), pqxx::sql_error);  // append-only

  r = Launch();
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = Str(Json(r), "id");
  ASSERT_TRUE(fleet_->WaitState(member_, id, "running"));
  const auto running = Balance();
  EXPECT_EQ(Str(running, "burn_per_hour"), "36.000000");
  EXPECT_LE(running.at("runway_seconds").as_int64(), 30);

  // Run down: the leader stops it at zero.
  ASSERT_TRUE(WaitFor([&] { return One("SELECT end_reason FROM instances WHERE id = $1", id) == "insufficient_funds"; }, 90s))
      << Balance() << server_->process().Stderr().substr(0, 3000);
  const std::int64_t spent = SettledSpend(id);
  const std::int64_t overshoot = spent - 300'000;
  const std::int64_t bound = kPriceMicros * (kSampleInterval + kRollupInterval).count() / 3600;
  std::printf("prepaid: $0.30 of credit at $36.00/GPU-hour; billed past zero: $%.6f; bound (one sample interval + one "
              "rating interval of burn): $%.6f\n",
              static_cast<double>(overshoot) / 1e6, static_cast<double>(bound) / 1e6);
  EXPECT_LE(overshoot, bound);
  EXPECT_GE(spent, 250'000) << "it ran on its credit";
  const auto after = Balance();
  EXPECT_LE(Micros(Str(after, "balance")), 0);
  EXPECT_EQ(Str(after, "burn_per_hour"), "0.000000");
  // Alerts once per crossing: the runway under 20 s, then zero; and the stop.
  EXPECT_EQ(One("SELECT string_agg(type || ':' || coalesce(data->>'threshold', data->>'reason'), ',' ORDER BY seq) "
                "FROM webhook_events WHERE tenant_id = $1", tenant_),
            "balance.low:runway,balance.low:zero,instance.stopped_for_funds:insufficient_funds");
  r = Launch();
  EXPECT_EQ(r.status, 402) << r.body;
  const auto metrics = Http(server_->admin_port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find("spillway_instances_stopped_for_funds_total{reason=\"insufficient_funds\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("spillway_tenant_balance_micros{stat=\"min\"} -"), std::string::npos);
  EXPECT_EQ(metrics.find("tenant_id=\"" + tenant_ + "\""), std::string::npos) << "no per-tenant series";
  // More credit lifts it.
  ASSERT_EQ(Call("POST", "/v1/billing/tenants/" + tenant_ + "/credits", finance_, R"({"amount":"5.00","reason":"top-up"})").status, 201);
  r = Launch();
  EXPECT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(Call("DELETE", "/v1/instances/" + Str(Json(r), "id"), member_).status, 200);
}

TEST_F(Spend, AMonthlyLimitStopsAtTheLimitWarnsAtEightyPercentAndRaisingItLifts) {
  const std::string other = fleet_->NewKey(fleet_->NewTenant("other", 1), "member");
  EXPECT_EQ(Call("PUT", "/v1/tenants/" + tenant_ + "/spend-limit", other, R"({"monthly_limit":"1.00"})").status, 404);
  EXPECT_EQ(Call("PUT", "/v1/tenants/" + tenant_ + "/spend-limit", member_, R"({"monthly_limit":"0"})").status, 422);
  EXPECT_EQ(Call("PUT", "/v1/tenants/" + tenant_ + "/spend-limit", member_, R"({"monthly_limit":1})").status, 422);
  auto r = Call("PUT", "/v1/tenants/" + tenant_ + "/spend-limit", member_, R"({"monthly_limit":"0.30"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r), "monthly_limit"), "0.30");
  EXPECT_EQ(Str(Json(r), "mode"), "postpaid");
  r = Launch();
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_TRUE(Balance().at("runway_seconds").is_null()) << "a postpaid tenant has no balance to run down";
  ASSERT_EQ(Call("DELETE", "/v1/instances/" + Str(Json(r), "id"), member_).status, 200);
  r = Launch();
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = Str(Json(r), "id");
  ASSERT_TRUE(WaitFor([&] { return One("SELECT end_reason FROM instances WHERE id = $1", id) == "spend_limit"; }, 90s))
      << Balance();
  const std::int64_t spent = SettledSpend(id);
  const std::int64_t overshoot = spent - 300'000;
  const std::int64_t bound = kPriceMicros * (kSampleInterval + kRollupInterval).count() / 3600;
  std::printf("spend limit: $0.30 a month at $36.00/GPU-hour; billed past the limit: $%.6f; bound: $%.6f\n",
              static_cast<double>(overshoot) / 1e6, static_cast<double>(bound) / 1e6);
  EXPECT_LE(overshoot, bound);
  EXPECT_EQ(One("SELECT string_agg(type || ':' || coalesce(data->>'threshold_percent', data->>'reason'), ',' ORDER BY seq) "
                "FROM webhook_events WHERE tenant_id = $1", tenant_),
            "spend_limit.reached:80,spend_limit.reached:100,instance.stopped_for_funds:spend_limit");
  r = Launch();
  ASSERT_EQ(r.status, 402) << r.body;
  EXPECT_EQ(Str(Json(r).at("error"), "code"), "spend_limit_reached");
  // Raising the limit lifts it.
  ASSERT_EQ(Call("PUT", "/v1/tenants/" + tenant_ + "/spend-limit", finance_, R"({"monthly_limit":"10.00"})").status, 200);
  r = Launch();
  EXPECT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(Call("DELETE", "/v1/instances/" + Str(Json(r), "id"), member_).status, 200);
  EXPECT_NE(Http(server_->admin_port(), "GET", "/metrics").body.find(
                "spillway_instances_stopped_for_funds_total{reason=\"spend_limit\"} 1"),
            std::string::npos);
}

// A prepaid (or limited) tenant whose host is cut off from the control plane (a loopback proxy that
// stops moving bytes, as a partition would) while its agent keeps sampling into its spool. Spend
// controls act on what the instance holds, not only on what was rated: the time since its last
// rated sample is pending, at today's price, so the balance and the stop move during the cut. The
// bound on what is billed past zero is the same as for a host that is heard: one sample interval
// plus one rating interval of burn (docs/architecture.md, "Prepaid balances and spend limits").
class SpendPartition : public Spend {
 protected:
  void SetUp() override {
    Start({{"SPILLWAY_FLEET_HEARTBEAT_TIMEOUT", "12s"},
           {"SPILLWAY_FLEET_INSTANCE_REPORT_GRACE", "60s"},  // as by default: longer than the timeout
           {"SPILLWAY_BILLING_LOW_BALANCE_RUNWAY", "5s"},
           {"SPILLWAY_BILLING_MIN_LAUNCH_RUNWAY", "2s"}},
          "cutoff", true);
  }
  // Makes the tenant prepaid with `credit` (USD).
  void Prepaid(const std::string& credit) {
    ASSERT_EQ(Call("PUT", "/v1/billing/tenants/" + tenant_ + "/mode", finance_, R"({"mode":"prepaid"})").status, 200);
    ASSERT_EQ(Call("POST", "/v1/billing/tenants/" + tenant_ + "/credits", finance_,
                   R"({"amount":")" + credit + R"(","reason":"x"})")
                  .status,
              201);
  }
  // spillway_hosts_marked_down_total, all reasons.
  double MarkedDown() {
    double n = 0;
    std::istringstream in(Http(server_->admin_port(), "GET", "/metrics").body);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("spillway_hosts_marked_down_total", 0) == 0) n += std::stod(line.substr(line.rfind(' ') + 1));
    return n;
  }
  // When an event of `type` was written, in ms since the epoch (0: none).
  std::int64_t EventAt(const std::string& type) {
    return std::stoll(One("SELECT coalesce(max(" SPW_EPOCH_MS("created_at") "), 0) FROM webhook_events WHERE "
                          "tenant_id = $1 AND type = $2",
                          tenant_, type));
  }
  struct Outcome {
    std::string end_reason;
    std::int64_t spent = 0, ended_ms = 0, healed_ms = 0;
    double marked_down = 0;  // hosts marked down meanwhile
    double resumed_s = 0;    // from the end of the cut until its backlog was in
  };
  // Launches, lets it run `before` and cuts its host off for `cut`; heals; waits until everything it
  // ran is rated. The cut starts with the instance running and samples flowing.
  Outcome RunWithCut(std::chrono::seconds before, std::chrono::seconds cut) {
    Outcome o;
    auto r = Launch();
    EXPECT_EQ(r.status, 201) << r.body;
    if (r.status != 201) return o;
    const std::string id = Str(Json(r), "id");
    EXPECT_TRUE(fleet_->WaitState(member_, id, "running"));
    std::this_thread::sleep_for(before);  // wall time is what is measured: samples flowing, then none
    proxy_->Cut();
    const auto cut_at = std::chrono::steady_clock::now();
    EXPECT_TRUE(WaitFor([&] { return One("SELECT ended_at IS NOT NULL FROM instances WHERE id = $1", id) == "t" ||
                                     std::chrono::steady_clock::now() - cut_at >= cut; },
                        cut + 5s));
    while (std::chrono::steady_clock::now() - cut_at < cut) std::this_thread::sleep_for(100ms);
    proxy_->Heal();
    o.healed_ms = EpochMs(SystemClockInstance().Now());
    // The agent resumes shipping within seconds: its backlog is in past the moment the cut ended.
    const auto healed = std::chrono::steady_clock::now();
    EXPECT_TRUE(WaitFor([&] {
      return One("SELECT coalesce(bool_and(sampled_through >= " SPW_TS(1) "), false) FROM host_watermarks",
                 o.healed_ms) == "t";
    }, 30s));
    o.resumed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - healed).count();
    EXPECT_TRUE(WaitFor([&] { return One("SELECT ended_at IS NOT NULL FROM instances WHERE id = $1", id) == "t"; }, 30s));
    o.end_reason = One("SELECT end_reason FROM instances WHERE id = $1", id);
    o.ended_ms = std::stoll(One("SELECT " SPW_EPOCH_MS("ended_at") " FROM instances WHERE id = $1", id));
    o.marked_down = MarkedDown();
    // Everything it held is in: the host's samples are folded past its end, and the total is still.
    EXPECT_TRUE(WaitFor([&] {
      return One("SELECT coalesce(bool_and(w.folded_through >= i.ended_at), false) FROM instances i "
                 "JOIN host_watermarks w ON w.host_id = i.host_id WHERE i.id = $1", id) == "t";
    }, 60s)) << server_->process().Stderr().substr(0, 3000);
    o.spent = StillSpend();
    EXPECT_EQ(Str(Balance(), "pending"), "0.000000") << "every held second is rated or past";
    return o;
  }
  const std::int64_t bound_ = kPriceMicros * (kSampleInterval + kRollupInterval).count() / 3600;
};

TEST_F(SpendPartition, APrepaidBalanceStopsAtZeroWhileItsHostIsCutOffForLongerThanTheHeartbeatTimeout) {
  // 10 s of burn; the cut starts 3 s in and lasts 25 s: zero comes 7 s into it, the heartbeat
  // timeout (12 s) 15 s in.
  Prepaid("0.10");
  const Outcome o = RunWithCut(3s, 25s);
  std::printf("prepaid, host cut off for 25 s (heartbeat timeout 12 s): $0.10 of credit; billed past zero: $%.6f; "
              "bound: $%.6f; ended %s\n",
              static_cast<double>(o.spent - 100'000) / 1e6, static_cast<double>(bound_) / 1e6, o.end_reason.c_str());
  EXPECT_EQ(o.end_reason, "insufficient_funds") << "the balance reached zero before the host was declared down";
  EXPECT_LE(o.spent - 100'000, bound_);
  EXPECT_GE(o.spent, 80'000) << "it ran on its credit";
  // The alerts went out at zero, during the cut, not when the backlog landed.
  const std::int64_t zero_at = EventAt("balance.low"), stopped_at = EventAt("instance.stopped_for_funds");
  EXPECT_GT(zero_at, 0);
  EXPECT_LT(zero_at, o.healed_ms);
  EXPECT_GT(stopped_at, 0);
  EXPECT_LT(stopped_at, o.healed_ms);
  EXPECT_EQ(One("SELECT string_agg(type || ':' || coalesce(data->>'threshold', data->>'reason'), ',' ORDER BY seq) "
                "FROM webhook_events WHERE tenant_id = $1", tenant_),
            "balance.low:runway,balance.low:zero,instance.stopped_for_funds:insufficient_funds");
}

TEST_F(SpendPartition, APrepaidBalanceStopsAtZeroWhileItsHostIsCutOffForLessThanTheHeartbeatTimeout) {
  // 10 s of burn; the cut starts 3 s in and lasts 10 s, under the heartbeat timeout: zero comes 7 s in.
  Prepaid("0.10");
  const Outcome o = RunWithCut(3s, 10s);
  std::printf("prepaid, host cut off for 10 s (heartbeat timeout 12 s): $0.10 of credit; billed past zero: $%.6f; "
              "bound: $%.6f\n",
              static_cast<double>(o.spent - 100'000) / 1e6, static_cast<double>(bound_) / 1e6);
  EXPECT_EQ(o.end_reason, "insufficient_funds");
  EXPECT_EQ(o.marked_down, 0) << "the host was never declared down";
  EXPECT_LE(o.spent - 100'000, bound_);
  EXPECT_GE(o.spent, 80'000);
  EXPECT_LT(EventAt("instance.stopped_for_funds"), o.healed_ms);
}

TEST_F(SpendPartition, AMonthlyLimitStopsAtTheLimitWhileItsHostIsCutOff) {
  ASSERT_EQ(Call("PUT", "/v1/tenants/" + tenant_ + "/spend-limit", member_, R"({"monthly_limit":"0.10"})").status, 200);
  const Outcome o = RunWithCut(3s, 25s);
  std::printf("spend limit, host cut off for 25 s (heartbeat timeout 12 s): $0.10 a month; billed past the limit: "
              "$%.6f; bound: $%.6f\n",
              static_cast<double>(o.spent - 100'000) / 1e6, static_cast<double>(bound_) / 1e6);
  EXPECT_EQ(o.end_reason, "spend_limit");
  EXPECT_LE(o.spent - 100'000, bound_);
  EXPECT_GE(o.spent, 80'000);
  EXPECT_LT(EventAt("spend_limit.reached"), o.healed_ms);
  EXPECT_LT(EventAt("instance.stopped_for_funds"), o.healed_ms);
}

TEST_F(SpendPartition, AHostDeclaredDownBeforeTheBalanceRanOutEndsItsInstanceHostDownAndItsBacklogIsBilled) {
  // 40 s of burn; the host is declared down 15 s in: the balance never reaches zero.
  Prepaid("0.40");
  const Outcome o = RunWithCut(3s, 20s);
  std::printf("prepaid, host cut off for 20 s (heartbeat timeout 12 s): $0.40 of credit; spent $%.6f; ended %s\n",
              static_cast<double>(o.spent) / 1e6, o.end_reason.c_str());
  EXPECT_EQ(o.end_reason, "host_down");
  std::printf("after the 20 s cut the agent's backlog was in %.1f s after the network came back\n", o.resumed_s);
  EXPECT_LE(o.resumed_s, 5.0) << "the agent resumes shipping within seconds, not after a 30 s backoff";
  EXPECT_GT(o.marked_down, 0);
  // Its samples up to the moment it was declared down arrived after the cut and were billed: about
  // 15 s of its 40, never more than the credit.
  EXPECT_GE(o.spent, 100'000);
  EXPECT_LE(o.spent, 400'000);
  EXPECT_EQ(EventAt("instance.stopped_for_funds"), 0);
}

// An agent stopped (SIGSTOP) for 8 s samples nothing meanwhile: that GPU time was held, never
// metered, and is not billed; GET /v1/usage shows it per instance (held, metered, unmetered).
TEST_F(SpendPartition, HeldTimeNoSampleCoveredIsShownPerInstanceAndNotBilled) {
  auto r = Launch();
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = Str(Json(r), "id");
  ASSERT_TRUE(fleet_->WaitState(member_, id, "running"));
  std::this_thread::sleep_for(3s);  // wall time is what is measured: sampled, then not
  ASSERT_EQ(::kill(agent_->pid(), SIGSTOP), 0);
  std::this_thread::sleep_for(8s);
  ASSERT_EQ(::kill(agent_->pid(), SIGCONT), 0);
  std::this_thread::sleep_for(3s);
  ASSERT_EQ(Call("DELETE", "/v1/instances/" + id, member_).status, 200);
  ASSERT_TRUE(WaitFor([&] { return One("SELECT ended_at IS NOT NULL FROM instances WHERE id = $1", id) == "t"; }, 30s));
  ASSERT_TRUE(WaitFor([&] {
    return One("SELECT coalesce(bool_and(w.folded_through >= i.ended_at), false) FROM instances i "
               "JOIN host_watermarks w ON w.host_id = i.host_id WHERE i.id = $1", id) == "t";
  }, 30s));
  const auto usage = Json(Call("GET", "/v1/usage?instance_id=" + id, member_));
  const auto& mine = usage.at("instances").as_array().at(0);
  const std::int64_t held = mine.at("held_gpu_seconds").as_int64(), metered = mine.at("metered_gpu_seconds").as_int64(),
                     unmetered = mine.at("unmetered_gpu_seconds").as_int64();
  std::printf("agent stopped 8 s on a 1-GPU instance: held %lld GPU-s, metered %lld, unmetered %lld\n",
              static_cast<long long>(held), static_cast<long long>(metered), static_cast<long long>(unmetered));
  // The agent's first tick after it resumes covers up to 3 sample intervals of the gap (agent/meter):
  // of the 8 s, at least 4 and at most 9 go unmetered.
  EXPECT_GE(unmetered, 4);
  EXPECT_LE(unmetered, 9);
  EXPECT_NEAR(static_cast<double>(held - metered), static_cast<double>(unmetered), 1.0);
  // Billed: what was metered, nothing more.
  const std::int64_t spent = Micros(Str(Balance(), "spent_this_month"));
  EXPECT_NEAR(static_cast<double>(spent), static_cast<double>(metered) * kPriceMicros / 3600, kPriceMicros / 3600.0 * 2);
}
