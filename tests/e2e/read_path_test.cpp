// The non-blocking read path (core/pg_async, docs/architecture.md "Read path"): GET /v1/tenants/{id}
// from a cached key is sent on a non-blocking connection and answered by the io thread when
// PostgreSQL answers; the thread serves other requests meanwhile; a statement that fails there is
// run again through a database worker.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
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
  ApiServer server(db.dsn());
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
  ApiServer server(pg.tls_dsn());
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
  ApiServer server(db.dsn(), FastFleetEnv());
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
