// Rate limits through the real apiserver (issue #23, point 6): a key past its bucket is refused 429
// with Retry-After and RateLimit-* headers and counted; its tenant's other keys share the tenant's
// bucket; another tenant is untouched while one floods; agents and the admin listener are exempt.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

double Metric(int admin_port, const std::string& series) {
  const auto m = Http(admin_port, "GET", "/metrics");
  const auto at = m.body.find("\n" + series + " ");
  return at == std::string::npos ? 0.0 : std::stod(m.body.substr(at + series.size() + 2));
}

std::chrono::microseconds P99(std::vector<std::chrono::microseconds> v) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, v.size() * 99 / 100)];
}

}  // namespace

class RateLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDb>();
    auto env = FastFleetEnv();
    env["SPILLWAY_RATELIMIT_KEY_RATE"] = "20";
    env["SPILLWAY_RATELIMIT_KEY_BURST"] = "20";
    env["SPILLWAY_RATELIMIT_TENANT_RATE"] = "30";
    env["SPILLWAY_RATELIMIT_TENANT_BURST"] = "30";
    server_ = std::make_unique<ApiServer>(db_->dsn(), env);
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
  }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<ApiServer> server_;
  std::unique_ptr<Fleet> fleet_;
};

TEST_F(RateLimits, AKeyPastItsBucketIsRefused429WithHeadersAndCounted) {
  const std::string tenant = fleet_->NewTenant("script", 4);
  const std::string key = fleet_->NewKey(tenant, "member");
  const std::string sibling = fleet_->NewKey(tenant, "member");
  HttpConn c(server_->port());
  int ok = 0;
  HttpResponse refused;
  for (int i = 0; i < 100 && refused.status == 0; ++i) {
    auto r = c.Call("GET", "/v1/instances", key);
    if (r.status == 200) ++ok;
    else refused = r;
  }
  EXPECT_GE(ok, 20);  // the burst, plus what refilled meanwhile
  ASSERT_EQ(refused.status, 429) << ok << " answered: " << refused.body;
  EXPECT_EQ(Str(Json(refused).at("error"), "code"), "rate_limited");
  EXPECT_NE(refused.body.find("this API key made more than 20 requests a second"), std::string::npos) << refused.body;
  EXPECT_EQ(refused.Header("retry-after"), "1");
  EXPECT_EQ(refused.Header("ratelimit-limit"), "20");
  EXPECT_EQ(refused.Header("ratelimit-remaining"), "0");
  EXPECT_EQ(refused.Header("ratelimit-reset"), "1");
  EXPECT_NE(refused.Header("ratelimit-policy").find("scope=key"), std::string::npos);
  EXPECT_GE(Metric(server_->admin_port(), "spillway_rate_limited_total{scope=\"key\"}"), 1.0);
  // The tenant's bucket (30) had ~ok tokens taken: its other key gets the rest, then the tenant's 429.
  HttpResponse tenant_refused;
  for (int i = 0; i < 100 && tenant_refused.status == 0; ++i) {
    auto r = c.Call("GET", "/v1/instances", sibling);
    if (r.status != 200) tenant_refused = r;
  }
  ASSERT_EQ(tenant_refused.status, 429);
  EXPECT_NE(tenant_refused.body.find("this key's tenant"), std::string::npos) << tenant_refused.body;
  // A second later there is room again; a refused write changed nothing.
  std::this_thread::sleep_for(1100ms);
  EXPECT_EQ(c.Call("GET", "/v1/instances", key).status, 200);
  // The admin listener is not limited.
  for (int i = 0; i < 60; ++i) ASSERT_EQ(Http(server_->admin_port(), "GET", "/healthz").status, 200);
}

TEST_F(RateLimits, OneTenantFloodingLeavesAnotherTenantsLatencyAndAgentsAlone) {
  const std::string noisy = fleet_->NewTenant("noisy", 4), quiet = fleet_->NewTenant("quiet", 4);
  const std::string noisy_keys[] = {fleet_->NewKey(noisy, "member"), fleet_->NewKey(noisy, "member")};
  const std::string quiet_key = fleet_->NewKey(quiet, "member");
  auto agent = fleet_->StartAgent("eu-north", "H100-80GB", 2, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("eu-north", "H100-80GB", "total_gpus") == 16; }, 20s));

  // The quiet tenant: 40 reads at 20 a second (inside its limit), timed; its p99.
  const auto quiet_p99 = [&] {
    HttpConn c(server_->port());
    std::vector<std::chrono::microseconds> took;
    for (int i = 0; i < 40; ++i) {
      const auto t = std::chrono::steady_clock::now();
      const auto r = c.Call("GET", "/v1/instances", quiet_key);
      took.push_back(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t));
      EXPECT_EQ(r.status, 200) << r.body;  // never refused
      std::this_thread::sleep_for(50ms);
    }
    return P99(took);
  };
  // The noisy tenant's script: two keys, each a loop sending ~500 requests a second (16 times what
  // its tenant may), for as long as the quiet tenant measures.
  std::atomic<int> noisy_ok{0}, noisy_429{0}, noisy_other{0};
  const auto flooding = [&](const auto& measure) {
    std::atomic<bool> stop{false};
    std::vector<std::thread> flood;
    for (const auto& k : noisy_keys)
      flood.emplace_back([&, k] {
        HttpConn c(server_->port());
        for (int i = 0; i < 20000 && !stop; ++i) {
          const int s = c.Call("GET", "/v1/instances", k).status;
          (s == 200 ? noisy_ok : s == 429 ? noisy_429 : noisy_other)++;
          std::this_thread::sleep_for(2ms);
        }
      });
    const auto p99 = measure();
    stop = true;
    for (auto& t : flood) t.join();
    return p99;
  };
  // Rounds alone and flooded, alternating, so what else this machine runs weighs on both alike; the
  // median round of each is compared. A round's p99 of 40 calls is its slowest call, and on two
  // busy cores (an ASan build, the flood's own threads) any round can catch a scheduling stall:
  // with five rounds, two such rounds on one side still do not decide.
  constexpr int kRounds = 5;
  std::vector<std::chrono::microseconds> alone_rounds, flooded_rounds;
  for (int round = 0; round < kRounds; ++round) {
    alone_rounds.push_back(quiet_p99());
    flooded_rounds.push_back(flooding(quiet_p99));
  }
  std::sort(alone_rounds.begin(), alone_rounds.end());
  std::sort(flooded_rounds.begin(), flooded_rounds.end());
  const auto alone = alone_rounds[kRounds / 2], flooded = flooded_rounds[kRounds / 2];
  std::printf("quiet tenant's p99 (median of 5 rounds): %.2f ms alone, %.2f ms while another floods (%.2fx); the "
              "flood: %d answered, %d refused 429\n",
              alone.count() / 1000.0, flooded.count() / 1000.0, double(flooded.count()) / double(alone.count()),
              noisy_ok.load(), noisy_429.load());
  EXPECT_GT(noisy_429, 5 * noisy_ok);  // most of the flood was refused...
  EXPECT_EQ(noisy_other, 0);           // ...as 429s, nothing else
  // ...and cheaply: the quiet tenant's p99 stays within twice its own (2 ms of slack for timer noise).
  EXPECT_LE(flooded.count(), 2 * alone.count() + 2000);
  // The agents were never limited: both hosts kept heartbeating and stayed up.
  const auto hosts = Json(fleet_->Call("GET", "/v1/hosts", fleet_->operator_key));
  for (const auto& h : hosts.at("data").as_array()) EXPECT_EQ(Str(h, "health"), "up");
}
