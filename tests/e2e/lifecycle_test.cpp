// The apiserver's commands and process life: migrate, bootstrap-admin, schema and config checks,
// graceful shutdown, the admin listener and TLS.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <signal.h>

#include <boost/json.hpp>
#include <fstream>
#include <future>
#include <thread>

#include "core/migrate.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {
int Migrate(const std::string& dsn, std::string* out = nullptr) {
  return RunCommand({ApiServerBinary(), "migrate"}, {{"SPILLWAY_DATABASE_URL", dsn}}, out);
}
}  // namespace

TEST(Lifecycle, ServeRefusesASchemaBehindItsCode) {
  TestDb db(/*migrate=*/false);
  Process serve({ApiServerBinary(), "serve"}, {{"SPILLWAY_DATABASE_URL", db.dsn()},
                                               {"SPILLWAY_LISTEN", "127.0.0.1:" + std::to_string(FreePort())},
                                               {"SPILLWAY_ADMIN_LISTEN", "127.0.0.1:" + std::to_string(FreePort())}});
  EXPECT_EQ(serve.Wait(), 2);
  EXPECT_NE(serve.Stderr().find("spillway-apiserver migrate"), std::string::npos) << serve.Stderr();
  std::string out;
  EXPECT_EQ(Migrate(db.dsn(), &out), 0) << out;
  EXPECT_NE(out.find("applied"), std::string::npos);
}

TEST(Lifecycle, ConcurrentMigrateRunsBothSucceed) {
  TestDb db(false);
  auto a = std::async(std::launch::async, [&] { return Migrate(db.dsn()); });
  auto b = std::async(std::launch::async, [&] { return Migrate(db.dsn()); });
  EXPECT_EQ(a.get(), 0);
  EXPECT_EQ(b.get(), 0);
  auto c = db.Connect();
  EXPECT_EQ(pqxx::nontransaction(*c).exec1("SELECT count(*) FROM schema_migrations")[0].as<int>(),
            static_cast<int>(spillway::EmbeddedMigrations().size()));
}

TEST(Lifecycle, MigrateRefusesAChangedMigration) {
  TestDb db;
  {
    auto c = db.Connect();
    pqxx::nontransaction(*c).exec("UPDATE schema_migrations SET checksum = 'edited' WHERE name LIKE '0001_%'");
  }
  std::string out;
  EXPECT_EQ(Migrate(db.dsn(), &out), 1);
  EXPECT_NE(out.find("0001_"), std::string::npos) << out;
  EXPECT_NE(out.find("changed"), std::string::npos) << out;
}

TEST(Lifecycle, BadConfigStopsStartupNamingTheKey) {
  std::string out;
  EXPECT_EQ(RunCommand({ApiServerBinary(), "serve"}, {{"SPILLWAY_SERVER_LISTNE", "x"}}, &out), 2);
  EXPECT_NE(out.find("SPILLWAY_SERVER_LISTNE"), std::string::npos) << out;
  EXPECT_EQ(RunCommand({ApiServerBinary(), "serve"}, {{"SPILLWAY_DATABASE_ACQUIRE_TIMEOUT", "soon"}}, &out), 2);
  EXPECT_NE(out.find("database.acquire_timeout"), std::string::npos) << out;
  // Checked with the other sections at start, before anything connects (it had been read only once
  // the dispatcher was built, where throwing ended the process without a word).
  EXPECT_EQ(RunCommand({ApiServerBinary(), "serve"}, {{"SPILLWAY_RATELIMIT_KEY_BURST", "0"}}, &out), 2);
  EXPECT_NE(out.find("ratelimit.key_burst"), std::string::npos) << out;
  EXPECT_EQ(RunCommand({ApiServerBinary(), "serve"}, {{"SPILLWAY_CONSOLE_SESSION_TTL", "10s"}}, &out), 2);
  EXPECT_NE(out.find("console.session_ttl"), std::string::npos) << out;
  const std::string path = "/tmp/spillway-bad-" + std::to_string(getpid()) + ".toml";
  std::ofstream(path) << "[database]\npool = 3\n";
  EXPECT_EQ(RunCommand({ApiServerBinary(), "--config", path, "migrate"}, {}, &out), 2);
  EXPECT_NE(out.find("database.pool"), std::string::npos) << out;
  std::remove(path.c_str());
  EXPECT_EQ(RunCommand({ApiServerBinary(), "frobnicate"}, {}, &out), 2);
  EXPECT_EQ(RunCommand({ApiServerBinary()}, {}, &out), 2);
}

TEST(Lifecycle, BootstrapAdminKeysWorkAndShareOneOperatorTenant) {
  TestDb db;
  ApiServer server(db.dsn());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto k1 = BootstrapAdmin(db.dsn());
  const auto k2 = BootstrapAdmin(db.dsn());
  EXPECT_NE(k1, k2);
  for (const auto& k : {k1, k2}) {
    const auto r = Http(server.port(), "GET", "/v1/tenants", k);
    ASSERT_EQ(r.status, 200) << r.body;
    const auto data = boost::json::parse(r.body).at("data").as_array();
    ASSERT_EQ(data.size(), 1u);
    EXPECT_TRUE(data[0].at("is_operator").as_bool());
  }
}

TEST(Lifecycle, SigtermDrainsRequestsInFlightRefusesNewOnesAndExitsZero) {
  TestDb db;
  ApiServer server(db.dsn());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(db.dsn());
  const auto created = Http(server.port(), "POST", "/v1/tenants", admin, R"({"name":"drain"})");
  ASSERT_EQ(created.status, 201);
  const std::string id(boost::json::parse(created.body).at("id").as_string());

  // Hold the tenant's row so the PATCH below stays in flight until we let it go.
  auto locker = db.Connect();
  pqxx::work lock(*locker);
  lock.exec_params("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", id);
  HttpConn idle(server.port());  // an idle keep-alive connection
  ASSERT_EQ(idle.Call("GET", "/v1/tenants", admin).status, 200);
  HttpConn inflight(server.port());
  inflight.SendRaw("PATCH /v1/tenants/" + id + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + admin +
                   "\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"gpu_quota\":64}");
  std::this_thread::sleep_for(300ms);

  ::kill(server.process().pid(), SIGTERM);
  EXPECT_TRUE(idle.ClosedByPeer(5s)) << "an idle connection was kept open during shutdown";
  // New connections are refused while the request drains.
  bool refused = false;
  for (int i = 0; i < 50 && !refused; ++i) {
    refused = !HttpConn(server.port()).ok();
    if (!refused) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(refused);
  EXPECT_TRUE(server.process().Running());
  lock.commit();
  const auto r = inflight.Read(10s);
  ASSERT_TRUE(r) << server.process().Stderr();
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->Header("connection"), "close");
  EXPECT_EQ(server.process().Wait(10s), 0) << server.process().Stderr();
}

TEST(Lifecycle, AdminListenerServesHealthReadinessAndMetrics) {
  TestDb db;
  ApiServer server(db.dsn());
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const auto admin = BootstrapAdmin(db.dsn());
  Http(server.port(), "GET", "/v1/tenants", admin);
  Http(server.port(), "GET", "/v1/tenants");
  EXPECT_EQ(Http(server.admin_port(), "GET", "/healthz").status, 200);
  const auto ready = Http(server.admin_port(), "GET", "/readyz");
  EXPECT_EQ(ready.status, 200);
  EXPECT_NE(ready.body.find("\"schema\":\"current\""), std::string::npos);
  // The admin routes are not on the public listener, and the API is not on the admin one.
  EXPECT_EQ(Http(server.port(), "GET", "/metrics").status, 404);
  EXPECT_EQ(Http(server.admin_port(), "GET", "/v1/tenants", admin).status, 404);

  const auto m = Http(server.admin_port(), "GET", "/metrics");
  ASSERT_EQ(m.status, 200);
  for (const char* want :
       {"http_requests_total{code=\"200\",method=\"GET\",route=\"/v1/tenants\"} 1",
        "http_requests_total{code=\"401\",method=\"GET\",route=\"/v1/tenants\"} 1",
        "http_request_duration_seconds_bucket{route=\"/v1/tenants\",le=", "spillway_db_pool_size 4",
        "spillway_db_pool_in_use", "spillway_db_pool_wait_seconds_count", "spillway_build_info{version=",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"})
    EXPECT_NE(m.body.find(want), std::string::npos) << want;
  const std::string path = "/tmp/spillway-metrics-" + std::to_string(getpid()) + ".txt";
  std::ofstream(path) << m.body;
  std::string out;
  const int rc = RunCommand({"/bin/sh", "-c", "promtool check metrics < " + path}, {}, &out);
  std::remove(path.c_str());
  EXPECT_EQ(rc, 0) << out;
}

TEST(Lifecycle, TlsListenerSpeaksTls12And13Only) {
  TestDb db;
  const std::string dir = "/tmp/spillway-tls-" + std::to_string(getpid());
  std::string out;
  ASSERT_TRUE(MakeLocalhostCertificate(dir, &out)) << out;
  const int tls_port = FreePort();
  ApiServer server(db.dsn(), TlsListenerEnv(dir, tls_port));
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    HttpConn c(tls_port, version);
    ASSERT_TRUE(c.ok()) << "TLS version " << std::hex << version << " refused";
    EXPECT_EQ(c.Call("GET", "/v1/openapi.yaml").status, 200);
    EXPECT_EQ(c.Call("GET", "/v1/tenants").status, 401);  // keep-alive over TLS, same API
  }
  for (int version : {TLS1_VERSION, TLS1_1_VERSION}) {
    HttpConn c(tls_port, version);
    EXPECT_FALSE(c.ok()) << "TLS version " << std::hex << version << " was accepted";
  }
  // TLS 1.2 offers forward-secret AEAD suites only (Mozilla "intermediate"): a client offering only
  // CBC or static-RSA suites is refused; one offering GCM or ChaCha20 with ECDHE gets in.
  for (const char* weak : {"AES128-SHA", "AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"}) {
    HttpConn c(tls_port, TLS1_2_VERSION, TLS1_2_VERSION, weak);
    EXPECT_FALSE(c.ok()) << weak << " was accepted";
  }
  for (const char* strong : {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"}) {
    HttpConn c(tls_port, TLS1_2_VERSION, TLS1_2_VERSION, strong);
    EXPECT_TRUE(c.ok()) << strong << " was refused";
  }
  {
    // The console's session cookie is Secure when it was set over TLS (and only then: the plain
    // listener's is not, or a browser on plain HTTP could never send it back).
    const std::string admin = BootstrapAdmin(db.dsn());
    const std::string body = "{\"api_key\":\"" + admin + "\"}";
    HttpConn c(tls_port, TLS1_3_VERSION);
    const auto over_tls = c.Call("POST", "/v1/console/sessions", "", body);
    ASSERT_EQ(over_tls.status, 201) << over_tls.body;
    EXPECT_NE(over_tls.Header("set-cookie").find("; HttpOnly; SameSite=Strict; Secure"), std::string::npos)
        << over_tls.Header("set-cookie");
    const auto over_plain = Http(server.port(), "POST", "/v1/console/sessions", "", body);
    ASSERT_EQ(over_plain.status, 201) << over_plain.body;
    EXPECT_EQ(over_plain.Header("set-cookie").find("Secure"), std::string::npos) << over_plain.Header("set-cookie");
  }
  HttpConn plain(tls_port);  // plain HTTP on the TLS port gets no answer
  plain.SendRaw("GET /v1/openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_FALSE(plain.Read(3s));
  RunCommand({"/bin/rm", "-rf", dir}, {}, nullptr);

  // A missing certificate stops start-up with exit 2 naming the key.
  std::string err;
  EXPECT_EQ(RunCommand({ApiServerBinary(), "serve"},
                       {{"SPILLWAY_DATABASE_URL", db.dsn()}, {"SPILLWAY_TLS_ENABLED", "true"},
                        {"SPILLWAY_LISTEN", "127.0.0.1:" + std::to_string(FreePort())},
                        {"SPILLWAY_ADMIN_LISTEN", "127.0.0.1:" + std::to_string(FreePort())},
                        {"SPILLWAY_TLS_LISTEN", "127.0.0.1:" + std::to_string(FreePort())},
                        {"SPILLWAY_TLS_CERT_FILE", "/nonexistent.pem"}, {"SPILLWAY_TLS_KEY_FILE", "/nonexistent.pem"},
                        {"SPILLWAY_SECRETS_KEY_FILE", TestSecretsKeyFile()}},
                       &err),
            2);
  EXPECT_NE(err.find("tls.cert_file"), std::string::npos) << err;
}
