// The non-blocking read path (core/pg_async, docs/architecture.md "Read path"): GET /v1/tenants/{id}
// from a cached key is sent on a non-blocking connection and answered by the io thread when
// PostgreSQL answers; the thread serves other requests meanwhile; a statement that fails there is
// run again through a database worker.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <map>
#include <string>
#include <thread>

#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

double Counter(int admin_port, const std::string& series) {
  const std::string metrics = Http(admin_port, "GET", "/metrics").body;
  const auto at = metrics.find(series + " ");
  return at == std::string::npos ? -1 : std::stod(metrics.substr(at + series.size() + 1));
}
const std::string kAnswered = R"(spillway_async_reads_total{result="answered"})";
const std::string kFellBack = R"(spillway_async_reads_total{result="fell_back"})";

struct Tenant {
  std::string id, path, member;
};
Tenant NewTenant(int port, const std::string& admin, const std::string& name) {
  const auto t = Http(port, "POST", "/v1/tenants", admin, R"({"name":")" + name + R"("})");
  EXPECT_EQ(t.status, 201) << t.body;
  Tenant out;
  out.id = std::string(boost::json::parse(t.body).at("id").as_string());
  out.path = "/v1/tenants/" + out.id;
  const auto k = Http(port, "POST", out.path + "/api-keys", admin, R"({"role":"member"})");
  out.member = std::string(boost::json::parse(k.body).at("secret").as_string());
  return out;
}

// Waits until a statement on `table` waits for a lock, as pg_stat_activity shows.
bool WaitForLockWait(const TestDb& db) {
  return WaitFor([&] {
    auto c = db.Connect();
    pqxx::nontransaction tx(*c);
    return tx.exec("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND query LIKE '%FROM tenants%'")[0][0]
               .as<int>() > 0;
  }, 10s);
}

// The server opens its non-blocking connections in the background: reads until one is answered
// on that path (the first read also puts the key in the cache).
bool AsyncPathReady(ApiServer& server, const Tenant& t) {
  return WaitFor([&] {
    return Http(server.port(), "GET", t.path, t.member).status == 200 && Counter(server.admin_port(), kAnswered) > 0;
  }, 10s);
}

// SameAnswers reads one key faster than its rate limit's burst refills: these tests measure which
// path answers, not a tenant to limit (rate_limit_test.cpp covers that).
std::map<std::string, std::string> Unlimited(std::map<std::string, std::string> env = {}) {
  env["SPILLWAY_RATELIMIT_ENABLED"] = "false";
  return env;
}

// 200 reads of t from 4 connections at once: how many answered 200 with `body`.
int SameAnswers(int port, const Tenant& t, const std::string& body) {
  std::atomic<int> same{0};
  std::vector<std::thread> load;
  for (int k = 0; k < 4; ++k)
    load.emplace_back([&] {
      HttpConn conn(port);
      for (int i = 0; i < 50; ++i) {
        const auto r = conn.Call("GET", t.path, t.member);
        if (r.status == 200 && r.body == body) ++same;
      }
    });
  for (auto& th : load) th.join();
  return same;
}

}  // namespace

TEST(ReadPath, ATenantReadIsAnsweredOnTheIoThreadAsTheWorkerPathWouldAnswerIt) {
  TestDb db;
  ApiServer server(db.dsn(), Unlimited());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(db.dsn());
  const Tenant a = NewTenant(server.port(), admin, "a"), b = NewTenant(server.port(), admin, "b");
  const auto first = Http(server.port(), "GET", a.path, a.member);  // the worker path, caching the key
  ASSERT_EQ(first.status, 200) << first.body;
  const double before = Counter(server.admin_port(), kAnswered);
  EXPECT_EQ(SameAnswers(server.port(), a, first.body), 200);
  EXPECT_GE(Counter(server.admin_port(), kAnswered) - before, 190) << "the reads did not take the non-blocking path";
  // The same rules as the handler: another tenant is 404 to a member, a malformed id 404.
  EXPECT_EQ(Http(server.port(), "GET", b.path, a.member).status, 404);
  EXPECT_EQ(Http(server.port(), "GET", "/v1/tenants/ten_nope", admin).status, 404);
  EXPECT_EQ(Http(server.port(), "GET", "/v1/tenants/ten_01m8cp7es1z5m5w25wwsax594h", admin).status, 404);
  EXPECT_EQ(Http(server.port(), "GET", b.path, admin).status, 200);
}

TEST(ReadPath, TheIoThreadServesOthersWhileAReadWaitsOnPostgres) {
  TestDb db;
  // One io thread: were it blocked on the read, nothing else could be answered.
  ApiServer server(db.dsn(), {{"SPILLWAY_SERVER_IO_THREADS", "1"}, {"SPILLWAY_DATABASE_INLINE_STATEMENT_TIMEOUT", "30s"}});
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(db.dsn());
  const Tenant a = NewTenant(server.port(), admin, "a");
  ASSERT_TRUE(AsyncPathReady(server, a));

  auto lock = db.Connect();
  pqxx::work holder(*lock);
  holder.exec("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE");
  // Several reads queue behind the lock on the io thread's one pipelined connection.
  std::atomic<int> ok{0}, done{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i)
    readers.emplace_back([&] {
      ok += Http(server.port(), "GET", a.path, a.member).status == 200;
      ++done;
    });
  EXPECT_TRUE(WaitForLockWait(db));
  // The reads wait on the lock; the same io thread answers other requests meanwhile.
  EXPECT_EQ(Http(server.port(), "GET", "/v1/openapi.yaml").status, 200);
  EXPECT_EQ(Http(server.admin_port(), "GET", "/healthz").status, 200);
  EXPECT_EQ(done, 0) << "a read finished while the table was locked";
  holder.abort();
  for (auto& t : readers) t.join();
  EXPECT_EQ(ok, 3);
}

TEST(ReadPath, AReadThatFailsThereIsRunAgainThroughAWorker) {
  TestDb db;
  ApiServer server(db.dsn(), {{"SPILLWAY_DATABASE_INLINE_STATEMENT_TIMEOUT", "200ms"}});
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(db.dsn());
  const Tenant a = NewTenant(server.port(), admin, "a");
  ASSERT_TRUE(AsyncPathReady(server, a));
  const double before = Counter(server.admin_port(), kFellBack);

  auto lock = db.Connect();
  pqxx::work holder(*lock);
  holder.exec("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE");
  std::atomic<int> status{0};
  std::thread reader([&] { status = Http(server.port(), "GET", a.path, a.member).status; });
  // Its statement times out on the io thread's connection; the worker's waits for the lock.
  EXPECT_TRUE(WaitFor([&] { return Counter(server.admin_port(), kFellBack) > before; }, 10s));
  holder.abort();
  reader.join();
  EXPECT_EQ(status, 200);
}

TEST(ReadPath, AReadCutOffOnALentConnectionIsRunAgainThroughAWorker) {
  TestDb db;
  // The blocking inline path alone: its statement timeout is short, a worker's is not.
  ApiServer server(db.dsn(), {{"SPILLWAY_DATABASE_ASYNC_CONNECTIONS", "0"},
                              {"SPILLWAY_DATABASE_INLINE_STATEMENT_TIMEOUT", "200ms"}});
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(db.dsn());
  const Tenant a = NewTenant(server.port(), admin, "a");
  ASSERT_EQ(Http(server.port(), "GET", a.path, a.member).status, 200);

  auto lock = db.Connect();
  pqxx::work holder(*lock);
  holder.exec("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE");
  std::atomic<int> status{0};
  std::thread reader([&] { status = Http(server.port(), "GET", a.path, a.member).status; });
  EXPECT_TRUE(WaitForLockWait(db));
  std::this_thread::sleep_for(500ms);  // past the inline timeout: the worker's statement waits now
  holder.abort();
  reader.join();
  EXPECT_EQ(status, 200);
}

// The apiserver connected to PostgreSQL over TLS (a remote database, as most are): the io threads'
// non-blocking reads are answered there too, as the worker path would answer them.
TEST(ReadPath, OverTlsToPostgresReadsAreAnsweredOnTheIoThread) {
  OwnCluster pg(/*tls=*/true);
  ASSERT_TRUE(pg.ok());
  std::string out;
  ASSERT_EQ(RunCommand({ApiServerBinary(), "migrate"}, {{"SPILLWAY_DATABASE_URL", pg.tls_dsn()}}, &out), 0) << out;
  ApiServer server(pg.tls_dsn(), Unlimited());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(pg.tls_dsn());
  const Tenant a = NewTenant(server.port(), admin, "tls");
  ASSERT_TRUE(AsyncPathReady(server, a)) << server.process().Stderr();
  const auto expected = Http(server.port(), "GET", a.path, a.member);
  ASSERT_EQ(expected.status, 200);
  const double before = Counter(server.admin_port(), kAnswered);
  EXPECT_EQ(SameAnswers(server.port(), a, expected.body), 200);
  EXPECT_GE(Counter(server.admin_port(), kAnswered) - before, 200);
  // Every session the server holds is encrypted, the io threads' included.
  auto c = pqxx::connection(pg.dsn());
  pqxx::nontransaction tx(c);
  const auto plain = tx.exec(
      "SELECT count(*) FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid) "
      "WHERE a.application_name = 'spillway-apiserver' AND NOT coalesce(s.ssl, false)")[0][0].as<int>();
  const auto encrypted = tx.exec(
      "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
      "WHERE a.application_name = 'spillway-apiserver' AND s.ssl")[0][0].as<int>();
  EXPECT_EQ(plain, 0);
  EXPECT_GT(encrypted, 0);
}

// GET /v1/instances/{id}, the read customers poll, has the non-blocking form too: the same JSON as
// the handler (the launch spec and where to connect included), and the same rule that another
// tenant's instance is 404 to a member.
TEST(ReadPath, AnInstanceReadIsAnsweredOnTheIoThreadAsTheWorkerPathWouldAnswerIt) {
  TestDb db;
  ApiServer server(db.dsn(), Unlimited(FastFleetEnv()));
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  spillway::test::Fleet fleet(db, server);
  auto agent = fleet.StartAgent("rp", "H100-80GB", 1, 8, {"--public-address", "gpu1.example.net"});
  const auto tenant = fleet.NewTenant("reader", 8), other = fleet.NewTenant("other", 8);
  const auto member = fleet.NewKey(tenant, "member"), stranger = fleet.NewKey(other, "member");
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("rp", "H100-80GB", "total_gpus") == 8; }, 20s));
  const auto created = fleet.Call("POST", "/v1/instances", member,
                                  R"({"instance_type":"h100.1x","region":"rp","market":"on_demand","image":"ghcr.io/acme/train:1",)"
                                  R"("command":["python","train.py"],"env":{"MODE":"x"},)"
                                  R"("ports":[{"port":8888,"protocol":"http"}]})");
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string id = Str(Json(created), "id"), path = "/v1/instances/" + id;
  ASSERT_TRUE(fleet.WaitState(member, id, "running", 20s));
  const auto first = fleet.Call("GET", path, member);  // caches the key; the next reads take the io thread's path
  ASSERT_EQ(first.status, 200) << first.body;
  ASSERT_NE(first.body.find("gpu1.example.net"), std::string::npos) << first.body;
  const double before = Counter(server.admin_port(), kAnswered);
  EXPECT_EQ(SameAnswers(server.port(), {id, path, member}, first.body), 200);
  EXPECT_GE(Counter(server.admin_port(), kAnswered) - before, 190) << "the reads did not take the non-blocking path";
  EXPECT_EQ(fleet.Call("GET", path, stranger).status, 404);  // twice: the second from the key cache
  EXPECT_EQ(fleet.Call("GET", path, stranger).status, 404);
  EXPECT_EQ(fleet.Call("GET", path, fleet.operator_key).body, first.body);
  EXPECT_EQ(fleet.Call("GET", "/v1/instances/ins_nope", member).status, 404);
  EXPECT_EQ(fleet.Call("GET", "/v1/instances/ins_01m8cp7es1z5m5w25wwsax594h", member).status, 404);
}

// GET /v1/instances, the list a tenant's dashboard polls, has the non-blocking form too: every
// filter, page and refusal answers as the handler does (a second apiserver on the same database,
// with no non-blocking connections, is the handler's side), and a member sees only its tenant.
TEST(ReadPath, AnInstanceListIsAnsweredOnTheIoThreadAsTheWorkerPathWouldAnswerIt) {
  TestDb db;
  ApiServer server(db.dsn(), FastFleetEnv());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  auto handler_env = FastFleetEnv();
  handler_env["SPILLWAY_DATABASE_ASYNC_CONNECTIONS"] = "0";
  ApiServer handler_side(db.dsn(), handler_env);
  ASSERT_TRUE(handler_side.WaitReady()) << handler_side.process().Stderr();
  spillway::test::Fleet fleet(db, server);
  auto agent = fleet.StartAgent("rl", "H100-80GB", 1, 8);
  const auto tenant = fleet.NewTenant("lister", 8), other = fleet.NewTenant("other", 8);
  const auto member = fleet.NewKey(tenant, "member"), stranger = fleet.NewKey(other, "member");
  ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("rl", "H100-80GB", "total_gpus") == 8; }, 20s));
  const auto launch = [&](const std::string& key, const std::string& market) {
    const auto r = fleet.Call("POST", "/v1/instances", key,
                              R"({"instance_type":"h100.1x","region":"rl","market":")" + market + R"("})");
    EXPECT_EQ(r.status, 201) << r.body;
    return Str(Json(r), "id");
  };
  std::vector<std::string> mine = {launch(member, "on_demand"), launch(member, "spot"), launch(member, "on_demand")};
  const std::string theirs = launch(stranger, "on_demand");
  for (const auto& id : mine) ASSERT_TRUE(fleet.WaitState(member, id, "running", 20s));
  ASSERT_EQ(fleet.Call("DELETE", "/v1/instances/" + mine[2], member).status, 200);
  ASSERT_TRUE(fleet.WaitState(member, mine[2], "terminated", 20s));  // no state changes under the comparison
  std::sort(mine.begin(), mine.end());
  const std::string host = Str(fleet.Instance(member, mine[0]), "host_id");

  const std::vector<std::pair<std::string, std::string>> asks = {
      {member, ""},
      {member, "?limit=1"},
      {member, "?limit=2&cursor=" + mine[0]},
      {member, "?cursor=" + mine[2]},
      {member, "?state=running"},
      {member, "?market=spot"},
      {member, "?state=terminated&market=on_demand"},
      {member, "?tenant_id=" + tenant},
      {member, "?tenant_id=" + other},        // 404: another tenant
      {member, "?host_id=" + host},           // 400: members do not filter by host
      {member, "?state=sleeping"},            // 400
      {member, "?market=cheap"},              // 400
      {member, "?limit=0"},                   // 400
      {member, "?limit=201"},                 // 400
      {member, "?cursor=nope"},               // 400
      {stranger, ""},
      {fleet.operator_key, ""},
      {fleet.operator_key, "?tenant_id=" + other},
      {fleet.operator_key, "?host_id=" + host + "&limit=2"},
      {fleet.operator_key, "?tenant_id=ten_bad"},  // 400
  };
  // The first read of a key takes the handler's path and puts the key in the cache.
  for (const auto& key : {member, stranger, fleet.operator_key})
    ASSERT_EQ(Http(server.port(), "GET", "/v1/instances", key).status, 200);
  const double before = Counter(server.admin_port(), kAnswered);
  int oks = 0;
  for (const auto& [key, query] : asks) {
    const auto got = Http(server.port(), "GET", "/v1/instances" + query, key);
    const auto want = Http(handler_side.port(), "GET", "/v1/instances" + query, key);
    ASSERT_EQ(got.status, want.status) << query << ": " << got.body;
    if (want.status == 200) {
      ++oks;
      EXPECT_EQ(got.body, want.body) << query;
    } else {  // the same error; the request ids differ
      const auto g = Json(got).at("error"), w = Json(want).at("error");
      EXPECT_EQ(g.at("code"), w.at("code")) << query;
      EXPECT_EQ(g.at("message"), w.at("message")) << query;
    }
  }
  EXPECT_EQ(oks, 12);
  EXPECT_EQ(Counter(server.admin_port(), kAnswered) - before, oks) << "the lists did not take the non-blocking path";
  // What the pages hold: a member its own three, newest state included; the stranger its one.
  const auto page = Json(Http(server.port(), "GET", "/v1/instances", member)).at("data").as_array();
  ASSERT_EQ(page.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(Str(page[i], "id"), mine[i]);
  const auto two = Json(Http(server.port(), "GET", "/v1/instances?limit=2", member));
  EXPECT_EQ(two.at("data").as_array().size(), 2u);
  EXPECT_EQ(Str(two, "next_cursor"), mine[1]);
  const auto strangers = Json(Http(server.port(), "GET", "/v1/instances", stranger)).at("data").as_array();
  ASSERT_EQ(strangers.size(), 1u);
  EXPECT_EQ(Str(strangers[0], "id"), theirs);
}
