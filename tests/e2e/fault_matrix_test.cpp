// The fault matrix: kill -9 an apiserver, stop PostgreSQL past the heartbeat timeout, restart
// PostgreSQL, each under a steady stream of keyed creates and terminates from a client that retries
// as a careful client would (same key until a definite answer). After each fault: no instance lost,
// none duplicated, none failed by the outage, the tenant never above its quota, and the API back by
// itself.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

constexpr int kQuota = 12;

class Stream {
 public:
  Stream(std::vector<int> ports, std::string key) : ports_(std::move(ports)), key_(std::move(key)) {}
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::set<std::string> created() {
    std::lock_guard lk(mu_);
    return created_;
  }
  std::set<std::string> terminated() {
    std::lock_guard lk(mu_);
    return terminated_;
  }
  int keys() const { return next_; }
  int definite() const { return definite_; }

 private:
  // Retries one request (alternating replicas) until it gets an answer that is not "try again".
  HttpResponse Until(const std::string& method, const std::string& path, const std::string& body,
                     std::map<std::string, std::string> headers) {
    for (int attempt = 0;; ++attempt) {
      const auto r = Http(ports_[(attempt + next_) % ports_.size()], method, path, key_, body, headers);
      const bool again = r.status == 0 || r.status == 503 ||
                         (r.status == 409 && r.body.find("idempotency_key_in_flight") != std::string::npos);
      if (!again || (stop_ && attempt > 200)) return r;
      std::this_thread::sleep_for(50ms);
    }
  }
  void Run() {
    std::vector<std::string> live;
    while (!stop_) {
      const std::string idem = "fm-" + std::to_string(next_++);
      const auto r = Until("POST", "/v1/instances",
                           R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})",
                           {{"Idempotency-Key", idem}});
      if (r.status == 201) {
        ++definite_;
        std::lock_guard lk(mu_);
        created_.insert(Str(Json(r), "id"));
        live.push_back(Str(Json(r), "id"));
      } else if (r.status == 409) {
        ++definite_;  // quota or capacity: the stream terminates some and goes on
      } else {
        ADD_FAILURE() << "create answered " << r.status << " " << r.body;
      }
      if (live.size() >= kQuota - 2 || (r.status == 409 && !live.empty())) {
        for (int k = 0; k < 3 && !live.empty(); ++k) {
          const std::string id = live.front();
          live.erase(live.begin());
          const auto d = Until("DELETE", "/v1/instances/" + id, "", {});
          EXPECT_EQ(d.status, 200) << d.body;
          std::lock_guard lk(mu_);
          terminated_.insert(id);
        }
      }
      std::this_thread::sleep_for(20ms);
    }
  }
  std::vector<int> ports_;
  std::string key_;
  std::atomic<bool> stop_{false};
  std::atomic<int> next_{0}, definite_{0};
  std::mutex mu_;
  std::set<std::string> created_, terminated_;
  std::thread thread_;
};

// One count; values go in as parameters ($1, $2), never into the SQL text.
template <class... Args>
std::int64_t Count(const std::string& dsn, const std::string& sql, const Args&... args) {
  pqxx::connection c(dsn);
  const pqxx::row r = pqxx::nontransaction(c).exec_params1(sql, args...);
  return r[0].as<std::int64_t>();
}

}  // namespace

TEST(FaultMatrix, KillAnApiserverStopAndRestartPostgresUnderKeyedCreatesAndTerminates) {
  OwnCluster pg;
  ASSERT_TRUE(pg.ok());
  ASSERT_TRUE(pg.Migrate());
  auto env = FastFleetEnv();  // heartbeat timeout 3s, report grace 5s
  env["SPILLWAY_DATABASE_CONNECT_TIMEOUT"] = "1s";
  env["SPILLWAY_DATABASE_ACQUIRE_TIMEOUT"] = "1s";
  ApiServer a(pg.dsn(), env), b(pg.dsn(), env);
  ASSERT_TRUE(a.WaitReady()) << a.process().Stderr();
  ASSERT_TRUE(b.WaitReady()) << b.process().Stderr();
  Fleet fleet(pg.dsn(), b);  // the agents talk to b; the stream to both
  auto agent = fleet.StartAgent("us-east", "H100-80GB", 4, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 32; }, 20s));
  const std::string tenant = fleet.NewTenant("matrix", kQuota);
  Stream stream({a.port(), b.port()}, fleet.NewKey(tenant, "member"));
  stream.Start();

  auto settle_and_check = [&](const char* fault) {
    ASSERT_TRUE(WaitFor([&] {
      return Http(a.admin_port(), "GET", "/readyz").status == 200 && Http(b.admin_port(), "GET", "/readyz").status == 200;
    }, 30s)) << fault << ": the API did not come back by itself";
    const int before = stream.definite();
    ASSERT_TRUE(WaitFor([&] { return stream.definite() >= before + 5; }, 30s)) << fault << ": the stream is stuck";
    std::this_thread::sleep_for(6s);  // past the heartbeat timeout and the report grace, heard time
    EXPECT_EQ(Count(pg.dsn(), "SELECT count(*) FROM instances WHERE tenant_id = $1 AND state = 'failed'", tenant), 0)
        << fault << ": instances failed by the outage";
    EXPECT_LE(Count(pg.dsn(),
                    "SELECT COALESCE(sum(gpus), 0) FROM instances WHERE tenant_id = $1 "
                    "AND state NOT IN ('terminated', 'failed')",
                    tenant),
              kQuota)
        << fault;
    // Exactly one instance per key that created one: every instance is the answer stored for a key.
    // (Both counts in one snapshot: the stream is still creating.)
    {
      pqxx::connection c(pg.dsn());
      pqxx::transaction<pqxx::isolation_level::repeatable_read> snap(c);
      const auto instances =
          snap.exec_params1("SELECT count(*) FROM instances WHERE tenant_id = $1", tenant)[0].as<std::int64_t>();
      const auto keys = snap.exec_params1("SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1 "
                                          "AND response_status = 201",
                                          tenant)[0].as<std::int64_t>();
      // And each instance is the answer of exactly one key.
      std::string detail;
      for (const auto& r : snap.exec_params(
               "SELECT i.id, i.state, (SELECT string_agg(k.key || '=' || k.response_status, ',') "
               "FROM idempotency_keys k WHERE k.tenant_id = i.tenant_id AND k.response_body LIKE '%' || i.id || '%') "
               "FROM instances i WHERE i.tenant_id = $1 "
               "AND 1 <> (SELECT count(*) FROM idempotency_keys k WHERE k.tenant_id = i.tenant_id "
               "AND k.response_status = 201 AND k.response_body LIKE '%' || i.id || '%')",
               tenant))
          detail += r[0].as<std::string>() + " " + r[1].as<std::string>() + " keys:" +
                    (r[2].is_null() ? "none" : r[2].as<std::string>()) + "; ";
      EXPECT_EQ(instances, keys) << fault << ": an instance without its key, or a key with two";
      EXPECT_EQ(detail, "") << fault << ": instances not the answer of exactly one key";
    }
    // Nothing acknowledged is lost: every instance the client was given exists, and is live unless the
    // client terminated it.
    for (const auto& id : stream.created()) {
      const auto state = [&] {
        pqxx::connection c(pg.dsn());
        const auto r = pqxx::nontransaction(c).exec_params("SELECT state FROM instances WHERE id = $1", id);
        return r.empty() ? std::string("missing") : r[0][0].as<std::string>();
      }();
      if (stream.terminated().count(id)) EXPECT_TRUE(state == "terminating" || state == "terminated") << id << " " << state;
      else EXPECT_TRUE(state == "provisioning" || state == "running") << fault << ": " << id << " is " << state;
    }
  };

  std::this_thread::sleep_for(2s);
  a.process().Stop(SIGKILL);  // an apiserver dies mid-stream
  std::this_thread::sleep_for(2s);
  a.Restart();
  settle_and_check("kill -9 of an apiserver");

  ASSERT_TRUE(pg.Stop());  // PostgreSQL down past the heartbeat timeout
  std::this_thread::sleep_for(5s);
  ASSERT_TRUE(pg.Start());
  settle_and_check("PostgreSQL stopped for 5 s");

  ASSERT_TRUE(pg.Stop());  // a quick restart
  ASSERT_TRUE(pg.Start());
  settle_and_check("PostgreSQL restarted");

  stream.Stop();
  // Nothing answered 500: every failure the faults caused was a 503 to retry.
  for (auto* server : {&a, &b}) {
    std::istringstream log(server->process().Stderr());
    for (std::string line; std::getline(log, line);)
      EXPECT_EQ(line.find("\"msg\":\"request failed\""), std::string::npos) << line;
  }
  EXPECT_GT(stream.keys(), 30);
  EXPECT_GT(stream.created().size(), 10u);
}
