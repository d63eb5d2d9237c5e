// The HTTP core, against the real spillway-apiserver over loopback.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <set>
#include <tuple>
#include <sstream>
#include <thread>

#include "apiserver/app.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

class HttpCore : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDb>();
    server_ = std::make_unique<ApiServer>(db_->dsn(), std::map<std::string, std::string>{
                                                          {"SPILLWAY_SERVER_HEADER_TIMEOUT", "1s"},
                                                          {"SPILLWAY_SERVER_BODY_TIMEOUT", "2s"},
                                                          {"SPILLWAY_SERVER_IDLE_TIMEOUT", "5s"},
                                                          {"SPILLWAY_SERVER_MAX_BODY_BYTES", "4096"}});
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    admin_key_ = BootstrapAdmin(db_->dsn());
    ASSERT_FALSE(admin_key_.empty());
  }
  int port() const { return server_->port(); }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<ApiServer> server_;
  std::string admin_key_;
};

namespace {
boost::json::object ErrorOf(const HttpResponse& r) {
  return boost::json::parse(r.body).as_object().at("error").as_object();
}
}  // namespace

TEST_F(HttpCore, KeepAliveServesManyRequestsOnOneConnection) {
  HttpConn c(port());
  ASSERT_TRUE(c.ok());
  for (int i = 0; i < 5; ++i) {
    const auto r = c.Call("GET", "/v1/tenants", admin_key_);
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_NE(r.Header("connection"), "close");
  }
}

TEST_F(HttpCore, PipelinedRequestsAreAnsweredInOrder) {
  HttpConn c(port());
  std::string batch;
  for (int i = 0; i < 4; ++i)
    batch += "GET /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + admin_key_ +
             "\r\nX-Request-Id: pipe-" + std::to_string(i) + "\r\n\r\n";
  batch += "GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-4\r\n\r\n";
  c.SendRaw(batch);  // one write: all five requests arrive before the first answer
  for (int i = 0; i < 5; ++i) {
    const auto r = c.Read();
    ASSERT_TRUE(r) << "response " << i << " missing";
    EXPECT_EQ(r->Header("x-request-id"), "pipe-" + std::to_string(i));
    EXPECT_EQ(r->status, i < 4 ? 200 : 404);
  }
}

// HEAD is not served (405), and its answer carries no body, so a keep-alive client reads the next
// response where it starts.
TEST_F(HttpCore, HeadIsAnsweredAsGetWithoutABody) {
  // RFC 9110 §9.3.2: the same status and headers as GET, Content-Length included, and no body (a
  // keep-alive client would take a body for the next response).
  HttpConn c(port());
  c.SendRaw("HEAD /v1/openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto head = c.Read(std::chrono::seconds(10), true);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
  const auto get = c.Read();
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 200);
  EXPECT_NE(get->body.find("openapi"), std::string::npos);
  EXPECT_EQ(head->Header("content-length"), std::to_string(get->body.size()));
  // An authenticated route: HEAD needs the key as GET does, and answers like it.
  c.SendRaw("HEAD /v1/tenants HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
            admin_key_ + "\r\n\r\n");
  const auto anonymous = c.Read(std::chrono::seconds(10), true);
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);
  const auto keyed = c.Read(std::chrono::seconds(10), true);
  ASSERT_TRUE(keyed);
  EXPECT_EQ(keyed->status, 200);
  EXPECT_TRUE(keyed->body.empty());
  EXPECT_NE(keyed->Header("content-length"), "0");
  // The admin listener too.
  HttpConn admin(server_->admin_port());
  admin.SendRaw("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto health = admin.Read(std::chrono::seconds(10), true);
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

TEST_F(HttpCore, OversizedBodyIs413) {
  const std::string big = "{\"name\":\"" + std::string(8000, 'x') + "\"}";
  const auto r = Http(port(), "POST", "/v1/tenants", admin_key_, big);
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(ErrorOf(r).at("code"), "payload_too_large");
  EXPECT_FALSE(ErrorOf(r).at("request_id").as_string().empty());
  // Chunked bodies are held to the same limit.
  HttpConn c(port());
  std::string req = "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + admin_key_ +
                    "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 10; ++i) req += "400\r\n" + std::string(1024, 'a') + "\r\n";
  req += "0\r\n\r\n";
  c.SendRaw(req);
  const auto chunked = c.Read();
  ASSERT_TRUE(chunked);
  EXPECT_EQ(chunked->status, 413);
}

TEST_F(HttpCore, SlowClientIsCutOffWhileOthersAreServed) {
  HttpConn slow(port());
  slow.SendRaw("GET /v1/tenants HTTP/1.1\r\nHost: x\r\n");  // headers never finish
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Http(port(), "GET", "/v1/tenants", admin_key_).status, 200);
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(slow.ClosedByPeer(10s)) << "the slow client was never cut off";
  EXPECT_LT(std::chrono::steady_clock::now() - start, 8s);

  // A body that stops arriving is cut off too.
  HttpConn slow_body(port());
  slow_body.SendRaw("POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{");
  EXPECT_TRUE(slow_body.ClosedByPeer(10s));
  // Counted as a 408. The socket closes (the client sees it) just before the count is taken, so
  // allow the server that moment.
  EXPECT_TRUE(WaitFor([&] {
    return Http(server_->admin_port(), "GET", "/metrics").body.find("code=\"408\",method=\"POST\",route=\"unmatched\"} 1") !=
           std::string::npos;
  }, 5s));
}

TEST_F(HttpCore, UnknownPathIs404AndWrongMethodIs405WithAllow) {
  auto r = Http(port(), "GET", "/v1/nothing-here");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(ErrorOf(r).at("code"), "not_found");
  r = Http(port(), "PUT", "/v1/tenants", admin_key_, "{}");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.Header("allow"), "POST, GET, HEAD");
  EXPECT_EQ(ErrorOf(r).at("code"), "method_not_allowed");
}

TEST_F(HttpCore, MalformedJsonIs400AndWrongContentTypeIs415) {
  auto r = Http(port(), "POST", "/v1/tenants", admin_key_, "{\"name\": ");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorOf(r).at("code"), "invalid_json");
  r = Http(port(), "POST", "/v1/tenants", admin_key_, "name=x", {{"Content-Type", "application/x-www-form-urlencoded"}});
  EXPECT_EQ(r.status, 415);
  EXPECT_EQ(ErrorOf(r).at("code"), "unsupported_media_type");
  r = Http(port(), "POST", "/v1/tenants", admin_key_, "{\"name\":\"ok-charset\"}",
           {{"Content-Type", "application/json; charset=utf-8"}});
  EXPECT_EQ(r.status, 201) << r.body;
  // Nothing was created by the refused requests.
  auto c = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*c).exec1("SELECT count(*) FROM tenants WHERE NOT is_operator")[0].as<int>(), 1);
}

TEST_F(HttpCore, MalformedHttpIs400) {
  HttpConn c(port());
  c.SendRaw("GARBAGE\r\n\r\n");
  const auto r = c.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(ErrorOf(*r).at("code"), "bad_request");
}

TEST_F(HttpCore, RequestIdIsEchoedOrGenerated) {
  auto r = Http(port(), "GET", "/v1/tenants", admin_key_, "", {{"X-Request-Id", "trace-abc.123"}});
  EXPECT_EQ(r.Header("x-request-id"), "trace-abc.123");
  r = Http(port(), "GET", "/v1/tenants", "", "", {{"X-Request-Id", "trace-xyz"}});
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(ErrorOf(r).at("request_id"), "trace-xyz");
  r = Http(port(), "GET", "/v1/tenants", admin_key_);
  EXPECT_EQ(r.Header("x-request-id").rfind("req_", 0), 0u);
  const auto r2 = Http(port(), "GET", "/v1/tenants", admin_key_);
  EXPECT_NE(r.Header("x-request-id"), r2.Header("x-request-id"));
}

TEST_F(HttpCore, OpenApiDocumentIsServedAndDescribesExactlyTheRouteTable) {
  const auto r = Http(port(), "GET", "/v1/openapi.yaml");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-type"), "application/yaml");
  EXPECT_EQ(r.body.rfind("openapi: 3.1", 0), 0u);
  // The operations under `paths:` (two-space path keys, four-space method keys: Redocly's lint in
  // ./scripts/test checks the rest of the document's structure) against the route table.
  std::set<std::string> documented, routed;
  std::istringstream doc(r.body);
  std::string line, path;
  bool in_paths = false;
  while (std::getline(doc, line)) {
    if (line == "paths:") {
      in_paths = true;
    } else if (!line.empty() && line[0] != ' ' && line[0] != '#') {
      in_paths = false;
    } else if (in_paths && line.rfind("  /", 0) == 0 && line.back() == ':') {
      path = line.substr(2, line.size() - 3);
    } else if (in_paths && line.size() > 5 && line.rfind("    ", 0) == 0 && line[4] != ' ' && line.back() == ':') {
      std::string method = line.substr(4, line.size() - 5);
      if (method == "parameters") continue;
      for (auto& ch : method) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      documented.insert(method + " " + path);
      EXPECT_NE(r.body.find("operationId", r.body.find(line)), std::string::npos);
    }
  }
  for (const auto& route : spillway::ApiRoutes()) routed.insert(route.method + " " + route.pattern);
  for (const auto& op : routed) EXPECT_TRUE(documented.count(op)) << op << " is served but not in openapi.yaml";
  for (const auto& op : documented) EXPECT_TRUE(routed.count(op)) << op << " is in openapi.yaml but not served";
  EXPECT_GT(documented.size(), 20u);
}

TEST_F(HttpCore, TransferEncodingOtherThanChunkedAloneIsRefusedAndTheConnectionClosed) {
  // A body framed by anything but "chunked" alone could end elsewhere for a proxy in front, and what
  // it took for body would run here as a second request (RFC 9112 §6.1, §6.3). Each variant carries
  // a whole smuggled request; none of them may run.
  const std::string inner = R"({"name":"smuggled"})";
  const std::string smuggled = "POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + admin_key_ +
                               "\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(inner.size()) + "\r\n\r\n" + inner;
  for (const std::string te : {"identity", "chunked, identity", "xchunked", "gzip", "gzip, chunked",
                               "chunked, chunked", "chunked;ext=1", " "}) {
    HttpConn c(port());
    c.SendRaw("GET /v1/openapi.yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te + "\r\n\r\n" + smuggled);
    const auto r = c.Read();
    ASSERT_TRUE(r) << te;
    EXPECT_EQ(r->status, 400) << te;
    EXPECT_EQ(ErrorOf(*r).at("code"), "bad_request") << te;
    EXPECT_TRUE(c.ClosedByPeer(5s)) << te;
  }
  {
    // Two Transfer-Encoding fields are one list: "chunked" then "identity".
    HttpConn c(port());
    c.SendRaw("GET /v1/openapi.yaml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" +
              smuggled);
    const auto r = c.Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400);
    EXPECT_TRUE(c.ClosedByPeer(5s));
  }
  {
    // Transfer-Encoding beside Content-Length.
    HttpConn c(port());
    c.SendRaw("POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + admin_key_ +
              "\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              "13\r\n{\"name\":\"smuggled\"}\r\n0\r\n\r\n");
    const auto r = c.Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400);
    EXPECT_TRUE(c.ClosedByPeer(5s));
  }
  auto conn = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*conn).exec1("SELECT count(*) FROM tenants WHERE name = 'smuggled'")[0].as<int>(), 0);
  // A chunked body alone is still fine.
  HttpConn ok(port());
  ok.SendRaw("POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + admin_key_ +
             "\r\nContent-Type: application/json\r\nTransfer-Encoding: Chunked\r\n\r\n"
             "11\r\n{\"name\":\"framed\"}\r\n0\r\n\r\n");
  const auto r = ok.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201) << r->body;
}

TEST_F(HttpCore, DuplicateJsonKeysAndInvisibleNamesAre4xx) {
  auto r = Http(port(), "POST", "/v1/tenants", admin_key_, R"({"name":"a","name":"b"})");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(ErrorOf(r).at("code"), "invalid_json");
  r = Http(port(), "POST", "/v1/tenants", admin_key_, R"({"name":"ok","gpu_quota":1,"gpu_quota":1000000})");
  EXPECT_EQ(r.status, 400) << r.body;
  // Nested objects are checked too; the same key in two different objects is fine.
  r = Http(port(), "POST", "/v1/tenants", admin_key_, R"({"name":"nested","x":{"a":1,"a":2}})");
  EXPECT_EQ(r.status, 400) << r.body;
  for (const std::string name : {"   ", "\\u00a0", "\\u3000\\t", "\\u200b"}) {
    r = Http(port(), "POST", "/v1/tenants", admin_key_, "{\"name\":\"" + name + "\"}");
    EXPECT_EQ(r.status, 422) << name << ": " << r.body;
  }
  r = Http(port(), "POST", "/v1/tenants", admin_key_, R"({"name":" spaced  name "})");
  EXPECT_EQ(r.status, 201) << r.body;
  auto conn = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*conn).exec1("SELECT count(*) FROM tenants WHERE NOT is_operator")[0].as<int>(), 1);
}

TEST_F(HttpCore, ContinueIsSentOnlyOnceTheKeyIsVerified) {
  const std::string body = R"({"name":"expecting"})";
  auto head = [&](const std::string& target, const std::string& key) {
    return "POST " + target + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nExpect: 100-continue\r\n\r\n";
  };
  // A key that is refused: the final answer at once, no 100, and the body is never asked for.
  const std::string unknown_key = "spw_" + std::string(26, '0') + "_" + std::string(43, 'A');
  for (const auto& [target, key, status] : std::vector<std::tuple<std::string, std::string, int>>{
           {"/v1/tenants", unknown_key, 401}, {"/v1/nothing", admin_key_, 404}, {"/v1/agent/register", admin_key_, 403}}) {
    HttpConn c(port());
    c.SendRaw(head(target, key));
    const auto r = c.Read();
    ASSERT_TRUE(r) << target;
    EXPECT_EQ(r->status, status) << target << ": " << r->body;
    EXPECT_TRUE(c.ClosedByPeer(5s)) << target;
  }
  // A key that may call the route: 100, then the body, then the answer.
  HttpConn c(port());
  c.SendRaw(head("/v1/tenants", admin_key_));
  const auto cont = c.Read();
  ASSERT_TRUE(cont);
  EXPECT_EQ(cont->status, 100);
  c.SendRaw(body);
  const auto created = c.Read();
  ASSERT_TRUE(created);
  EXPECT_EQ(created->status, 201) << created->body;
  auto conn = db_->Connect();
  EXPECT_EQ(pqxx::nontransaction(*conn).exec1("SELECT count(*) FROM tenants WHERE name = 'expecting'")[0].as<int>(), 1);
}
