// Prepaid balances and spend limits through the real apiserver and a simulated agent (README, "Cost
// controls"): a prepaid tenant's instance runs its credit down to zero and is stopped; a postpaid
// tenant's monthly limit stops it likewise and raising the limit lifts it. Each measures what was
// billed past zero (or past the limit) against the bound: one sample interval plus one rating
// interval of the burn rate.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <cstdio>

#include "billing/exact_amount.hpp"
#include "core/db.hpp"
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
    db_ = std::make_unique<TestDb>();
    conn_ = OpenSession({db_->dsn(), "spillway-test", 3000ms, 30000ms});
    Exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES ('H100-80GB', "
         "'on_demand', " + std::to_string(kPriceMicros) + ", '2020-01-01T00:00:00Z')");
    auto env = FastFleetEnv();
    env["SPILLWAY_AGENT_SAMPLE_INTERVAL"] = "1s";
    env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "1s";
    env["SPILLWAY_BILLING_LOW_BALANCE_RUNWAY"] = "20s";
    env["SPILLWAY_BILLING_MIN_LAUNCH_RUNWAY"] = "5s";
    server_ = std::make_unique<ApiServer>(db_->dsn(), env);
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
    finance_ = fleet_->NewKey(fleet_->operator_tenant, "finance");
    tenant_ = fleet_->NewTenant("thrifty", 4);
    member_ = fleet_->NewKey(tenant_, "member");
    agent_ = fleet_->StartAgent("eu-north", "H100-80GB", 1, 2);
    ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("eu-north", "H100-80GB", "total_gpus") == 2; }, 20s));
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
