// PostgreSQL high availability (docs/ha.md): pg_auto_failover's monitor, a primary and a
// synchronous secondary, made by scripts/pg-ha as an operator would, and the apiserver on the
// multi-host DSN (target_session_attrs=read-write). The primary is killed with -9 while keyed
// launches, credit notes and an agent's samples go on: writes resume by themselves once the
// secondary is promoted, and nothing acknowledged is lost or made twice.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A cluster of scripts/pg-ha in a folder of its own: the monitor on port(), node1 and node2 on the
// next two ports.
class HaCluster {
 public:
  HaCluster() {
    char tmpl[] = "/tmp/spw-ha-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    ::chmod(dir_.c_str(), 0755);
    for (int tries = 0; tries < 20 && port_ == 0; ++tries) {
      const int p = FreePort();
      if (p < 65000 && PortFree(p + 1) && PortFree(p + 2)) port_ = p;
    }
    ok_ = port_ != 0 && Script({"start", std::to_string(port_)}, &log_) == 0;
    if (ok_) {
      ok_ = Script({"dsn"}, &dsn_) == 0;
      while (!dsn_.empty() && dsn_.back() == '\n') dsn_.pop_back();
    }
  }
  ~HaCluster() {
    Script({"stop"}, nullptr);
    RunCommand({"/bin/rm", "-rf", dir_}, {}, nullptr);
  }
  bool ok() const { return ok_; }
  const std::string& log() const { return log_; }
  const std::string& dsn() const { return dsn_; }
  // Runs scripts/pg-ha COMMAND DIR ARGS...; its exit code, its output in *out.
  int Script(std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = {std::string(SPILLWAY_SOURCE_DIR) + "/scripts/pg-ha", args[0], dir_};
    argv.insert(argv.end(), args.begin() + 1, args.end());
    // Creating the three clusters takes seconds here; a busy CI runner gets five minutes.
    Process script(argv, {{"SPW_PG_FSYNC", "off"}});
    const int rc = script.Wait(std::chrono::minutes(5));
    if (out) *out = script.Stderr();
    return rc;
  }
  // The primary's name, from the monitor.
  std::string Primary() {
    std::string out;
    Script({"primary"}, &out);
    return out.substr(0, out.find('\n'));
  }

 private:
  static bool PortFree(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return free;
  }
  std::string dir_, dsn_, log_;
  int port_ = 0;
  bool ok_ = false;
};

std::string Sql(const std::string& dsn, const std::string& sql) {
  pqxx::connection c(dsn);
  return SqlValue(c, sql);
}

// Successful writes, by when they were answered: the longest time between two is the time the
// cloud took no writes.
class WriteClock {
 public:
  void Wrote() {
    std::lock_guard lk(mu_);
    times_.push_back(Clock::now());
  }
  bool WroteSince(Clock::time_point t) {
    std::lock_guard lk(mu_);
    return !times_.empty() && times_.back() > t;
  }
  std::chrono::milliseconds LongestGap() {
    std::lock_guard lk(mu_);
    std::chrono::milliseconds gap{0};
    for (size_t i = 1; i < times_.size(); ++i)
      gap = std::max(gap, std::chrono::duration_cast<std::chrono::milliseconds>(times_[i] - times_[i - 1]));
    return gap;
  }

 private:
  std::mutex mu_;
  std::vector<Clock::time_point> times_;
};

}  // namespace

TEST(HighAvailability, KillingThePrimaryLosesNothingAcknowledgedAndWritesResumeByThemselves) {
  HaCluster ha;
  ASSERT_TRUE(ha.ok()) << ha.log();
  std::string out;
  ASSERT_EQ(RunCommand({ApiServerBinary(), "migrate"}, {{"SPILLWAY_DATABASE_URL", ha.dsn()}}, &out), 0) << out;
  // The primary commits only once the secondary has the commit: synchronous replication.
  EXPECT_NE(Sql(ha.dsn(), "SHOW synchronous_standby_names"), "");

  // Last month's books: one finalized invoice, whose credit notes take numbers from the
  // credit-note series while the primary dies. (Seeded before the apiserver starts, so that its
  // leader closes the month with them in it.)
  const std::string last_month = Sql(ha.dsn(), "SELECT to_char(date_trunc('month', now()) - interval '1 day', 'YYYY-MM')");
  {
    pqxx::connection c(ha.dsn());
    pqxx::work tx(c);
    tx.exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ('ten_ha_books', 'books', 8)");
    tx.exec("INSERT INTO hosts (id, hostname, region, zone, gpu_model, gpu_count, state, token_hash) "
            "VALUES ('hst_ha_books', 'ha-books', 'old', 'old-a', 'H100-80GB', 1, 'disabled', 'x')");
    tx.exec("INSERT INTO gpus (host_id, gpu_index, uuid, model, memory_bytes) "
            "VALUES ('hst_ha_books', 0, 'GPU-ha-books', 'H100-80GB', 85899345920)");
    tx.exec("INSERT INTO host_watermarks (host_id, sampled_through, last_batch_seq, last_batch_at, clock_skew_ms, "
            "folded_through) VALUES ('hst_ha_books', now(), 0, now(), 0, now())");
    // A day on one GPU at $2.00 an hour: $48.00 to credit from.
    tx.exec("INSERT INTO instances (id, tenant_id, name, instance_type, gpu_model, gpus, region, market, state, host_id, "
            "started_at, ended_at, end_reason) VALUES ('ins_ha_books', 'ten_ha_books', 'books', 'h100.1x', 'H100-80GB', 1, "
            "'old', 'on_demand', 'terminated', 'hst_ha_books', date_trunc('month', now()) - interval '10 days', "
            "date_trunc('month', now()) - interval '9 days', 'terminated')");
    tx.exec("INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at, released_at) "
            "SELECT id, host_id, 0, started_at, ended_at FROM instances WHERE id = 'ins_ha_books'");
    tx.exec("INSERT INTO usage_rated_hourly (hour, instance_id, tenant_id, market, price_micros_per_gpu_hour, gpu_ms) "
            "SELECT h, 'ins_ha_books', 'ten_ha_books', 'on_demand', 2000000, 3600000 FROM generate_series("
            "date_trunc('month', now()) - interval '10 days', date_trunc('month', now()) - interval '9 days 1 hour', "
            "interval '1 hour') AS h");
    tx.exec_params("INSERT INTO billing_dirty (tenant_id, period, marked_at) VALUES ('ten_ha_books', $1, now()) "
                   "ON CONFLICT DO NOTHING",
                   last_month);
    tx.commit();
  }

  auto env = FastFleetEnv();
  // Keyed load from few keys, as fast as it goes: load, not a tenant to limit.
  env["SPILLWAY_RATELIMIT_ENABLED"] = "false";
  // No host is judged for the failover: the agent is heard again within this.
  env["SPILLWAY_FLEET_HEARTBEAT_TIMEOUT"] = "60s";
  env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "1s";
  env["SPILLWAY_DATABASE_CONNECT_TIMEOUT"] = "2s";
  env["SPILLWAY_DATABASE_ACQUIRE_TIMEOUT"] = "2s";
  ApiServer server(ha.dsn(), env);
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(ha.dsn(), server);
  const auto closed = fleet.Call("POST", "/v1/billing/periods/" + last_month + "/close", fleet.admin);
  ASSERT_EQ(closed.status, 200) << closed.body;
  const auto invoices = Json(fleet.Call("GET", "/v1/billing/invoices?status=finalized&tenant_id=ten_ha_books", fleet.admin));
  ASSERT_EQ(invoices.at("data").as_array().size(), 1u) << invoices;
  const std::string invoice = Str(invoices.at("data").as_array()[0], "id");
  const std::string books_sql =
      "SELECT string_agg(number || ' ' || total_cents || ' ' || content_sha256, ',' ORDER BY number) FROM invoices "
      "WHERE status = 'finalized'";
  const std::string books = Sql(ha.dsn(), books_sql);

  const std::string tenant = fleet.NewTenant("steady", 64);
  const std::string key = fleet.NewKey(tenant, "member");
  auto agent = fleet.StartAgent("ha", "H100-80GB", 2, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("ha", "H100-80GB", "total_gpus") == 16; }, 20s));
  // One instance runs throughout: its samples must all arrive, once each.
  auto r = fleet.Call("POST", "/v1/instances", key, R"({"instance_type":"h100.1x","region":"ha","market":"on_demand"})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string steady = Str(Json(r), "id");
  ASSERT_TRUE(fleet.WaitState(key, steady, "running"));

  // Two clients that retry each write, with its Idempotency-Key, until it is acknowledged (as a
  // client of a cloud does): launch-and-terminate, and credit notes of a cent.
  std::atomic<bool> stop{false};
  std::atomic<int> refused{0}, replayed{0};
  std::mutex mu;
  std::map<std::string, std::string> launched;  // idempotency key -> instance id, as acknowledged
  std::map<std::string, std::string> noted;     // idempotency key -> credit note number
  std::map<int, int> statuses;                  // answers that were not acknowledgements
  WriteClock writes;
  // Sends until one of `ok` comes back; the answer.
  const auto until = [&](std::initializer_list<int> ok, const std::string& method, const std::string& path,
                         const std::string& api_key, const std::string& body, const std::string& idem) {
    const auto deadline = Clock::now() + 120s;
    for (;;) {
      auto res = fleet.Call(method, path, api_key, body, idem.empty() ? std::map<std::string, std::string>{}
                                                                       : std::map<std::string, std::string>{{"Idempotency-Key", idem}});
      // A write whose commit was not answered before the primary died, answered now from its key.
      if (res.Header("idempotent-replayed") == "true") ++replayed;
      if (std::find(ok.begin(), ok.end(), res.status) != ok.end() || Clock::now() > deadline) return res;
      {
        std::lock_guard lk(mu);
        ++statuses[res.status];
      }
      ++refused;
      std::this_thread::sleep_for(100ms);
    }
  };
  std::thread launcher([&] {
    for (int i = 0; !stop; ++i) {
      const std::string idem = "ha-launch-" + std::to_string(i);
      auto res = until({201, 409}, "POST", "/v1/instances", key,
                       R"({"instance_type":"h100.1x","region":"ha","market":"on_demand"})", idem);
      if (res.status == 409) {  // the pool is full of instances still stopping: not a write
        std::this_thread::sleep_for(100ms);
        continue;
      }
      if (res.status != 201) break;
      writes.Wrote();
      const std::string id = Str(Json(res), "id");
      {
        std::lock_guard lk(mu);
        launched[idem] = id;
      }
      res = until({200}, "DELETE", "/v1/instances/" + id, key, "", "");
      if (res.status != 200) break;
      writes.Wrote();
    }
  });
  std::thread finance([&] {
    for (int i = 0; !stop; ++i) {
      const std::string idem = "ha-note-" + std::to_string(i);
      auto res = until({201}, "POST", "/v1/billing/invoices/" + invoice + "/credit-notes", fleet.admin,
                       R"({"amount":"0.01","reason":"failover drill"})", idem);
      if (res.status != 201) break;
      writes.Wrote();
      std::lock_guard lk(mu);
      noted[idem] = Str(Json(res), "number");
    }
  });

  std::this_thread::sleep_for(3s);
  const std::string killed = ha.Primary();
  ASSERT_TRUE(killed == "node1" || killed == "node2") << killed;
  ASSERT_EQ(ha.Script({"kill-primary"}, &out), 0) << out;
  const auto kill_time = Clock::now();
  // Writes resume by themselves, on the other node.
  const bool resumed = WaitFor([&] { return writes.WroteSince(kill_time + 1s); }, 90s);
  std::this_thread::sleep_for(3s);
  stop = true;
  launcher.join();
  finance.join();
  ASSERT_TRUE(resumed) << "no write was acknowledged in 90 s after the primary was killed\n" << server.process().Stderr();
  const auto gap = writes.LongestGap();
  std::printf("failover: %s killed, %s promoted; %zu launches and %zu credit notes acknowledged, %d answers "
              "refused meanwhile, %d answered from their Idempotency-Key; the longest time without a write: %.1f s\n",
              killed.c_str(), ha.Primary().c_str(), launched.size(), noted.size(), refused.load(), replayed.load(),
              gap.count() / 1000.0);
  for (const auto& [status, n] : statuses) std::printf("  refused with %d: %d\n", status, n);
  EXPECT_NE(ha.Primary(), killed);
  EXPECT_LE(gap, 30s) << "the target is at most 30 s without writes";

  // The killed node comes back as the secondary: a primary and a synchronous secondary again.
  ASSERT_EQ(ha.Script({"start"}, &out), 0) << out;

  pqxx::connection c(ha.dsn());
  // Every acknowledged launch exists once, under the id it was acknowledged with, and no retry
  // made a second instance.
  std::set<std::string> ids;
  for (const auto& [idem, id] : launched) ids.insert(id);
  EXPECT_EQ(ids.size(), launched.size());
  EXPECT_EQ(SqlValue(c, "SELECT count(*) FROM instances WHERE tenant_id = $1 AND id <> $2", tenant, steady),
            std::to_string(launched.size()));
  for (const auto& id : ids) EXPECT_EQ(SqlValue(c, "SELECT count(*) FROM instances WHERE id = $1", id), "1") << id;
  // Every acknowledged credit note is there with its number; the series has no gap and no number twice.
  std::set<std::string> numbers;
  for (const auto& [idem, number] : noted) numbers.insert(number);
  EXPECT_EQ(numbers.size(), noted.size());
  EXPECT_EQ(SqlValue(c, "SELECT count(*) FROM credit_notes"), std::to_string(noted.size()));
  EXPECT_EQ(SqlValue(c, "SELECT count(DISTINCT number) FROM credit_notes"), std::to_string(noted.size()));
  EXPECT_EQ(SqlValue(c, "SELECT last_value FROM billing_number_series WHERE series = 'credit_note'"),
            std::to_string(noted.size()));
  for (const auto& n : numbers) EXPECT_EQ(SqlValue(c, "SELECT count(*) FROM credit_notes WHERE number = $1", n), "1") << n;
  // The finalized invoice is as it was, number and hash.
  EXPECT_EQ(Sql(ha.dsn(), books_sql), books);

  // The steady instance's samples: none stored twice, and its metering covers the time it held its
  // GPU (the agent spooled through the failover and sent the rest after).
  EXPECT_EQ(SqlValue(c, "SELECT count(*) - count(DISTINCT (host_id, gpu_index, ts)) FROM usage_samples"), "0");
  double coverage = 0;
  EXPECT_TRUE(fleet.WaitCoverage(key, steady, 0.99, 60s, &coverage)) << "coverage " << coverage;
  // No host was marked down, and the agent and the apiserver ran throughout.
  EXPECT_EQ(SqlValue(c, "SELECT count(*) FROM hosts WHERE health = 'down'"), "0");
  EXPECT_TRUE(agent->Running());
  EXPECT_TRUE(server.process().Running());
}
