// Tenants, API keys, roles and the audit log, through the real server. The route-table walk
// checks every route with no key, a wrong-role key and another tenant's key.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <set>

#include "apiserver/app.hpp"
#include "apiserver/context.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::test;

namespace {
boost::json::value Json(const HttpResponse& r) { return boost::json::parse(r.body); }
std::string Str(const boost::json::value& v, const char* k) { return std::string(v.at(k).as_string()); }
}  // namespace

class Auth : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDb>();
    server_ = std::make_unique<ApiServer>(db_->dsn(), std::map<std::string, std::string>{
                                                          {"SPILLWAY_AGENT_BOOTSTRAP_TOKEN", "walk-bootstrap"}});
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    admin_ = BootstrapAdmin(db_->dsn());
    auto ops = Json(Http(port(), "GET", "/v1/tenants", admin_));
    operator_tenant_ = Str(ops.at("data").as_array()[0], "id");
    finance_ = NewKey(operator_tenant_, "finance");
    operator_ = NewKey(operator_tenant_, "operator");
    tenant_a_ = NewTenant("tenant-a");
    tenant_b_ = NewTenant("tenant-b");
    member_a_ = NewKey(tenant_a_, "member", &member_a_id_);
    member_b_ = NewKey(tenant_b_, "member");
    // A host (registered as an agent would) and one instance of tenant A on it.
    const auto reg = Http(port(), "POST", "/v1/agent/register", "walk-bootstrap",
                          R"({"hostname":"walk-1","region":"us-east","zone":"us-east-1a","gpus":[)"
                          R"({"index":0,"uuid":"GPU-walk-0","model":"H100-80GB","memory_bytes":85899345920}]})");
    ASSERT_EQ(reg.status, 201) << reg.body;
    host_id_ = Str(Json(reg), "host_id");
    host_token_ = Str(Json(reg), "host_token");
    const auto inst = Http(port(), "POST", "/v1/instances", member_a_,
                           R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})");
    ASSERT_EQ(inst.status, 201) << inst.body;
    instance_a_ = Str(Json(inst), "id");
    // A webhook of tenant A, for the webhook routes.
    const auto hook = Http(port(), "POST", "/v1/webhooks", member_a_,
                           R"({"url":"https://hooks.example/a","events":["invoice.finalized"]})");
    ASSERT_EQ(hook.status, 201) << hook.body;
    webhook_a_ = Str(Json(hook), "id");
    // A draft invoice of tenant A (what the billing step would write), for the invoice routes.
    auto conn = db_->Connect();
    pqxx::work tx(*conn);
    tx.exec_params("INSERT INTO invoices (id, tenant_id, period, status, subtotal_cents, tax_rate_bp, tax_cents, "
                   "total_cents, buyer, issuer, content_sha256, created_at, updated_at) VALUES ('inv_walk', $1, "
                   "'2026-11', 'draft', 0, 0, 0, 0, '{}', '{}', '-', now(), now())",
                   tenant_a_);
    tx.commit();
  }
  int port() const { return server_->port(); }
  // The server hears revocations (LISTEN spillway_auth) and so may use its key cache.
  bool CacheListening() {
    return Http(server_->admin_port(), "GET", "/metrics").body.find("spillway_auth_key_cache_listening 1") !=
           std::string::npos;
  }
  std::string NewTenant(const std::string& name) {
    const auto r = Http(port(), "POST", "/v1/tenants", admin_, "{\"name\":\"" + name + "\",\"gpu_quota\":8}");
    EXPECT_EQ(r.status, 201) << r.body;
    return Str(Json(r), "id");
  }
  std::string NewKey(const std::string& tenant, const std::string& role, std::string* id = nullptr) {
    const auto r = Http(port(), "POST", "/v1/tenants/" + tenant + "/api-keys", admin_, "{\"role\":\"" + role + "\"}");
    EXPECT_EQ(r.status, 201) << r.body;
    if (id) *id = Str(Json(r), "id");
    return Str(Json(r), "secret");
  }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<ApiServer> server_;
  std::string admin_, finance_, operator_, member_a_, member_b_, member_a_id_;
  std::string operator_tenant_, tenant_a_, tenant_b_, host_id_, host_token_, instance_a_, webhook_a_;
};

TEST_F(Auth, EveryRouteRefusesNoKeyWrongRoleAndOtherTenants) {
  const std::map<unsigned, std::string*> keys = {{kAdmin, &admin_},       {kFinance, &finance_},
                                                 {kOperator, &operator_}, {kMember, &member_b_},
                                                 {kHost, &host_token_}};
  int checked = 0;
  for (const auto& route : ApiRoutes()) {
    if (route.roles == kUnauthenticated) continue;
    std::string path = route.pattern;
    auto fill = [&](const std::string& param, const std::string& value) {
      const auto at = path.find("{" + param + "}");
      if (at != std::string::npos) path.replace(at, param.size() + 2, value);
    };
    const bool instances = route.pattern.rfind("/v1/instances", 0) == 0;
    const bool hosts = route.pattern.rfind("/v1/hosts", 0) == 0;
    const bool invoices = route.pattern.find("/invoices/") != std::string::npos;
    const bool webhooks = route.pattern.rfind("/v1/webhooks", 0) == 0;
    fill("id", instances ? instance_a_ : hosts ? host_id_ : invoices ? "inv_walk" : webhooks ? webhook_a_ : tenant_a_);
    fill("period", "2026-11");
    fill("key_id", member_a_id_);
    fill("region", "us-east");
    fill("gpu_model", "H100-80GB");
    const std::string body = route.body == Body::kNone ? "" : "{}";
    const std::string what = route.method + " " + route.pattern;

    auto r = Http(port(), route.method, path, "", body);
    EXPECT_EQ(r.status, 401) << what << ": " << r.body;
    EXPECT_EQ(r.Header("www-authenticate"), "Bearer") << what;
    r = Http(port(), route.method, path, "spw_" + std::string(26, '0') + "_" + std::string(43, 'a'), body);
    EXPECT_EQ(r.status, 401) << what << " with an unknown key";

    for (const auto& [bit, key] : keys) {
      if (route.roles & bit) continue;
      r = Http(port(), route.method, path, *key, body);
      EXPECT_EQ(r.status, 403) << what << " with a " << RoleName(bit) << " key: " << r.body;
    }
    if ((route.roles & kMember) && route.pattern.find("{id}") != std::string::npos) {
      r = Http(port(), route.method, path, member_b_, body);  // tenant B's member, tenant A's object
      EXPECT_EQ(r.status, 404) << what << " with another tenant's key: " << r.body;
      r = Http(port(), route.method, path, member_a_, body);  // and A's own member may
      EXPECT_NE(r.status, 404) << what;
      EXPECT_NE(r.status, 403) << what;
    }
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

TEST_F(Auth, RevokedKeyIsRefusedAtOnce) {
  std::string id;
  const std::string key = NewKey(tenant_a_, "member", &id);
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_a_, key).status, 200);
  const auto r = Http(port(), "DELETE", "/v1/tenants/" + tenant_a_ + "/api-keys/" + id, admin_);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(Json(r).at("revoked_at").is_null());
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_a_, key).status, 401);
  // Revoking again changes nothing; another tenant's path does not reach the key.
  EXPECT_EQ(Http(port(), "DELETE", "/v1/tenants/" + tenant_a_ + "/api-keys/" + id, admin_).status, 200);
  EXPECT_EQ(Http(port(), "DELETE", "/v1/tenants/" + tenant_b_ + "/api-keys/" + id, admin_).status, 404);
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_a_, member_a_).status, 200);  // other keys unaffected
}

TEST_F(Auth, SuspendedTenantIsRefusedAtOnce) {
  auto r = Http(port(), "PATCH", "/v1/tenants/" + tenant_a_, admin_, R"({"status":"suspended"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r), "status"), "suspended");
  r = Http(port(), "GET", "/v1/tenants/" + tenant_a_, member_a_);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(Str(Json(r).at("error"), "code"), "tenant_suspended");
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_b_, member_b_).status, 200);
  ASSERT_EQ(Http(port(), "PATCH", "/v1/tenants/" + tenant_a_, admin_, R"({"status":"active"})").status, 200);
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_a_, member_a_).status, 200);
  // The operator's own tenant cannot be suspended (it would lock every admin out).
  r = Http(port(), "PATCH", "/v1/tenants/" + operator_tenant_, admin_, R"({"status":"suspended"})");
  EXPECT_EQ(r.status, 409);
}

TEST_F(Auth, KeysAreStoredOnlyAsHashesAndShownOnce) {
  std::string id;
  const std::string key = NewKey(tenant_a_, "member", &id);
  auto c = db_->Connect();
  const auto row = pqxx::nontransaction(*c).exec_params1("SELECT encode(secret_hash, 'hex') FROM api_keys WHERE id = $1", id);
  const std::string secret = key.substr(key.size() - 43);
  EXPECT_EQ(row[0].as<std::string>(), Sha256Hex(secret));
  EXPECT_EQ(pqxx::nontransaction(*c).exec_params1(
                "SELECT count(*) FROM api_keys WHERE encode(secret_hash, 'escape') LIKE '%' || $1 || '%'", secret)[0]
                .as<int>(),
            0);
  const auto list = Http(port(), "GET", "/v1/tenants/" + tenant_a_ + "/api-keys", admin_);
  ASSERT_EQ(list.status, 200);
  EXPECT_EQ(list.body.find("secret"), std::string::npos);
  EXPECT_EQ(Json(list).at("data").as_array().size(), 2u);
  // A customer tenant cannot be given a privileged key.
  const auto r = Http(port(), "POST", "/v1/tenants/" + tenant_a_ + "/api-keys", admin_, R"({"role":"admin"})");
  EXPECT_EQ(r.status, 422);
  EXPECT_EQ(Str(Json(r).at("error"), "code"), "role_not_allowed");
}

TEST_F(Auth, MutationsWriteTheAuditLog) {
  const auto r = Http(port(), "PATCH", "/v1/tenants/" + tenant_b_, admin_, R"({"gpu_quota":32})",
                      {{"X-Request-Id", "audit-check-1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("gpu_quota").as_int64(), 32);
  auto c = db_->Connect();
  const auto admin_key_id = "key_" + admin_.substr(4, 26);
  const auto row = pqxx::nontransaction(*c).exec_params1(
      "SELECT actor_key_id, tenant_id, action, target FROM audit_log WHERE request_id = $1", "audit-check-1");
  EXPECT_EQ(row[0].as<std::string>(), admin_key_id);
  EXPECT_EQ(row[1].as<std::string>(), tenant_b_);
  EXPECT_EQ(row[2].as<std::string>(), "tenant.update");
  EXPECT_EQ(row[3].as<std::string>(), tenant_b_);
  // Every mutation so far left one row: bootstrap (tenant + key), 2 tenants, 4 keys, this patch.
  const auto actions = pqxx::nontransaction(*c).exec("SELECT action, count(*) FROM audit_log GROUP BY action ORDER BY action");
  std::map<std::string, int> counts;
  for (const auto& a : actions) counts[a[0].as<std::string>()] = a[1].as<int>();
  EXPECT_EQ(counts["api_key.create"], 5);
  EXPECT_EQ(counts["tenant.create"], 3);
  EXPECT_EQ(counts["tenant.update"], 1);
  // A refused request writes nothing.
  Http(port(), "PATCH", "/v1/tenants/" + tenant_b_, admin_, R"({"gpu_quota":-1})", {{"X-Request-Id", "audit-bad"}});
  EXPECT_EQ(pqxx::nontransaction(*c).exec1("SELECT count(*) FROM audit_log WHERE request_id = 'audit-bad'")[0].as<int>(), 0);
}

TEST_F(Auth, TenantInputIsValidatedAndChangesNothingWhenBad) {
  auto code = [&](const std::string& body) {
    const auto r = Http(port(), "POST", "/v1/tenants", admin_, body);
    return std::to_string(r.status) + " " + (r.status >= 400 ? Str(Json(r).at("error"), "code") : "");
  };
  EXPECT_EQ(code("{}"), "422 validation_failed");
  EXPECT_EQ(code(R"({"name":""})"), "422 validation_failed");
  EXPECT_EQ(code(R"({"name":"x","gpu_quota":-1})"), "422 validation_failed");
  EXPECT_EQ(code(R"({"name":"x","gpu_quota":"8"})"), "422 validation_failed");
  EXPECT_EQ(code(R"({"name":"x","colour":"red"})"), "422 validation_failed");
  EXPECT_EQ(code(R"(["name"])"), "422 validation_failed");
  EXPECT_EQ(code(R"({"name":"TENANT-A"})"), "409 tenant_name_taken");
  EXPECT_EQ(Http(port(), "POST", "/v1/tenants", admin_, "").status, 400);
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants/ten_nope", admin_).status, 404);
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants?limit=0", admin_).status, 400);
  EXPECT_EQ(Http(port(), "GET", "/v1/tenants?cursor=garbage", admin_).status, 400);
  EXPECT_EQ(Http(port(), "PATCH", "/v1/tenants/" + tenant_a_, admin_, "{}").status, 422);
  auto c = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*c).exec1("SELECT count(*) FROM tenants")[0].as<int>(), 3);
}

TEST_F(Auth, ListsPageWithCursors) {
  for (int i = 0; i < 5; ++i) NewTenant("page-" + std::to_string(i));
  std::set<std::string> seen;
  std::string cursor;
  int pages = 0;
  for (;;) {
    const auto r = Http(port(), "GET", "/v1/tenants?limit=2" + (cursor.empty() ? "" : "&cursor=" + cursor), finance_);
    ASSERT_EQ(r.status, 200) << r.body;
    const auto j = Json(r);
    for (const auto& t : j.at("data").as_array()) EXPECT_TRUE(seen.insert(Str(t, "id")).second);
    ++pages;
    if (j.at("next_cursor").is_null()) break;
    cursor = std::string(j.at("next_cursor").as_string());
  }
  EXPECT_EQ(seen.size(), 8u);  // operator, a, b and 5 pages' worth
  EXPECT_EQ(pages, 4);
  const auto suspended = Http(port(), "GET", "/v1/tenants?status=suspended", admin_);
  EXPECT_EQ(Json(suspended).at("data").as_array().size(), 0u);
}

// Another replica (or an operator in psql) revokes a key or suspends a tenant: the change reaches
// this replica's key cache through the spillway_auth notification, without any request to it.
TEST_F(Auth, RevocationsElsewhereReachTheKeyCache) {
  ASSERT_TRUE(WaitFor([&] { return CacheListening(); }, std::chrono::seconds(10)));
  std::string id;
  const std::string key = NewKey(tenant_b_, "member", &id);
  ASSERT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_b_, key).status, 200);  // now remembered
  ASSERT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_b_, key).status, 200);
  auto conn = db_->Connect();
  pqxx::nontransaction(*conn).exec_params("UPDATE api_keys SET revoked_at = now() WHERE id = $1", id);
  EXPECT_TRUE(WaitFor([&] { return Http(port(), "GET", "/v1/tenants/" + tenant_b_, key).status == 401; },
                      std::chrono::seconds(5)));
  ASSERT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_b_, member_b_).status, 200);
  pqxx::nontransaction(*conn).exec_params("UPDATE tenants SET status = 'suspended' WHERE id = $1", tenant_b_);
  EXPECT_TRUE(WaitFor([&] { return Http(port(), "GET", "/v1/tenants/" + tenant_b_, member_b_).status == 403; },
                      std::chrono::seconds(5)));
  // The cache served the repeated reads; the metrics say so.
  const auto metrics = Http(server_->admin_port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find("spillway_auth_key_cache_lookups_total{result=\"hit\"}"), std::string::npos);
}

// With the cache off every request asks the database: a change made there is refused on the next call.
TEST(AuthNoCache, EveryRequestAsksTheDatabase) {
  TestDb db;
  ApiServer server(db.dsn(), {{"SPILLWAY_AUTH_KEY_CACHE_TTL", "0s"}});
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const std::string admin = BootstrapAdmin(db.dsn());
  auto tenants = boost::json::parse(Http(server.port(), "GET", "/v1/tenants", admin).body);
  const std::string tenant(tenants.at("data").as_array()[0].at("id").as_string());
  ASSERT_EQ(Http(server.port(), "GET", "/v1/tenants/" + tenant, admin).status, 200);
  auto conn = db.Connect();
  pqxx::nontransaction(*conn).exec("UPDATE api_keys SET revoked_at = now()");
  EXPECT_EQ(Http(server.port(), "GET", "/v1/tenants/" + tenant, admin).status, 401);
}

// The listening connection dies (PostgreSQL restarted, a network blip): the replica stops trusting
// its cache, listens again, and later revocations reach it as before.
TEST_F(Auth, TheKeyCacheRecoversFromLosingItsListener) {
  ASSERT_TRUE(WaitFor([&] { return CacheListening(); }, std::chrono::seconds(10)));
  std::string id;
  const std::string key = NewKey(tenant_b_, "member", &id);
  ASSERT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_b_, key).status, 200);
  auto conn = db_->Connect();
  auto notifier_pids = [&] {
    std::set<int> pids;
    for (const auto& r : pqxx::nontransaction(*conn).exec(
             "SELECT pid FROM pg_stat_activity WHERE application_name = 'spillway-notifier' "
             "AND datname = current_database()"))
      pids.insert(r[0].as<int>());
    return pids;
  };
  const auto before = notifier_pids();
  ASSERT_EQ(before.size(), 1u);
  pqxx::nontransaction(*conn).exec_params("SELECT pg_terminate_backend($1)", *before.begin());
  // Back to listening, on a new backend.
  ASSERT_TRUE(WaitFor([&] {
    const auto now = notifier_pids();
    return now.size() == 1 && !now.count(*before.begin()) && CacheListening();
  }, std::chrono::seconds(10)));
  ASSERT_EQ(Http(port(), "GET", "/v1/tenants/" + tenant_b_, key).status, 200);  // remembered again
  pqxx::nontransaction(*conn).exec_params("UPDATE api_keys SET revoked_at = now() WHERE id = $1", id);
  EXPECT_TRUE(WaitFor([&] { return Http(port(), "GET", "/v1/tenants/" + tenant_b_, key).status == 401; },
                      std::chrono::seconds(5)));
}
