// Webhooks through the real apiserver (docs/architecture.md, "Webhooks"): endpoints registered by
// finance (every tenant's events) and by a member (its own), events written with the change they
// report, signed deliveries to a receiver on loopback, and a kill -9 of the apiserver while a
// delivery is in flight: the receiver, deduplicating by event id, sees every event exactly once.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "apiserver/http/client.hpp"
#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/ids.hpp"
#include "provisioning/hosts.hpp"
#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"
#include "webhooks/webhooks.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

// Reads one HTTP request from `c` in full (waiting at most `timeout_s` for each read): its bytes in
// `in`, where its headers end and its body's length. False when the peer closed or went quiet first.
bool ReadRequest(int c, int timeout_s, std::string& in, std::size_t& header_end, std::size_t& length) {
  timeval tv{timeout_s, 0};
  ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  header_end = std::string::npos;
  length = 0;
  for (;;) {
    if (header_end == std::string::npos && (header_end = in.find("\r\n\r\n")) != std::string::npos) {
      std::string head = in.substr(0, header_end);
      for (auto& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (const auto at = head.find("content-length:"); at != std::string::npos) length = std::stoul(head.substr(at + 15));
    }
    if (header_end != std::string::npos && in.size() >= header_end + 4 + length) return true;
    const ssize_t n = ::recv(c, buf, sizeof buf, 0);
    if (n <= 0) return false;
    in.append(buf, static_cast<std::size_t>(n));
  }
}

// A webhook receiver on 127.0.0.1: records every request it reads in full; answers 200, or 302 on
// /redirect; while held, it keeps the first request it reads unanswered until released.
// A server on a free 127.0.0.1 port that runs Serve(connection) on a thread of its own for each
// connection; a subclass calls Listen() last in its constructor and StopListening() first in its
// destructor.
class LoopbackServer {
 public:
  int port() const { return port_; }

 protected:
  virtual ~LoopbackServer() = default;
  virtual void Serve(int c) = 0;
  void Listen() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 128) != 0)
      throw std::runtime_error("receiver: cannot listen");
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    accept_ = std::thread([this] {
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) continue;
        std::lock_guard lock(handlers_mu_);
        handlers_.emplace_back([this, c] { Serve(c); });
      }
    });
  }
  void StopListening() {
    stop_ = true;
    accept_.join();
    for (auto& t : handlers_) t.join();
    ::close(fd_);
  }
  std::atomic<bool> stop_{false};

 private:
  int fd_ = -1, port_ = 0;
  std::mutex handlers_mu_;
  std::vector<std::thread> handlers_;
  std::thread accept_;
};

class Receiver : public LoopbackServer {
 public:
  struct Got {
    std::string path, id, type, timestamp, signature, body;
  };
  Receiver() { Listen(); }
  ~Receiver() override {
    stop_ = true;
    Release();
    StopListening();
  }
  void Hold() { held_ = true; }
  void Release() {
    std::lock_guard lock(mu_);
    held_ = false;
    cv_.notify_all();
  }
  std::vector<Got> got() {
    std::lock_guard lock(mu_);
    return got_;
  }
  bool holding() {
    std::lock_guard lock(mu_);
    return holding_;
  }

 private:
  void Serve(int c) override {
    std::string in;
    std::size_t header_end = 0, length = 0;
    if (!ReadRequest(c, 10, in, header_end, length)) {
      ::close(c);
      return;
    }
    Got g;
    g.path = in.substr(in.find(' ') + 1, in.find(' ', in.find(' ') + 1) - in.find(' ') - 1);
    g.id = Header(in, header_end, "spillway-event-id");
    g.type = Header(in, header_end, "spillway-event-type");
    g.timestamp = Header(in, header_end, "spillway-timestamp");
    g.signature = Header(in, header_end, "spillway-signature");
    g.body = in.substr(header_end + 4, length);
    bool hold = false;
    {
      std::unique_lock lock(mu_);
      got_.push_back(g);
      if (held_ && !holding_) {
        hold = holding_ = true;
        cv_.wait_for(lock, 60s, [&] { return !held_; });
      }
    }
    if (!hold) {
      const std::string reply = g.path == "/redirect"
                                    ? "HTTP/1.1 302 Found\r\nLocation: /hook\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                    : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
      ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
    }
    ::close(c);
  }
  static std::string Lower(std::string s) {
    for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  }
  static std::string Header(const std::string& in, std::size_t end, const std::string& name) {
    const std::string head = Lower(in.substr(0, end));
    const auto at = head.find("\r\n" + name + ":");
    if (at == std::string::npos) return "";
    const auto from = at + 2 + name.size() + 1;
    std::string v = in.substr(from, in.find("\r\n", from) - from);
    while (!v.empty() && v[0] == ' ') v.erase(0, 1);
    return v;
  }
  bool held_ = false, holding_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Got> got_;
};

}  // namespace

class WebhooksE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDb>();
    conn_ = OpenSession({db_->dsn(), "spillway-test", 3000ms, 30000ms});
    Seed();
    auto env = FastFleetEnv();
    env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "1s";
    env["SPILLWAY_BILLING_CLOSE_MAX_WAIT"] = "2000h";  // closed on demand here
    env["SPILLWAY_WEBHOOKS_HTTP_HOSTS"] = "127.0.0.1";
    env["SPILLWAY_WEBHOOKS_RETRY_BASE"] = "200ms";
    env["SPILLWAY_WEBHOOKS_TIMEOUT"] = "60s";  // the held delivery waits for the kill
    server_ = std::make_unique<ApiServer>(db_->dsn(), env);
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
    finance_ = fleet_->NewKey(fleet_->operator_tenant, "finance");
    for (const auto& t : tenants_) members_.push_back(fleet_->NewKey(t, "member"));
  }
  // Last month, three tenants each ran an instance 11:00-12:00 on the 15th, rated at $2.00 an hour,
  // on a host that never reported past that day (so the leader waits, and finance closes on demand).
  void Seed() {
    const Month last = MonthOf(MonthOf(SystemClockInstance().Now()).begin - 1ms);
    period_ = last.Label();
    const std::string day = period_ + "-15";
    const std::string host = InTransaction(*conn_, [&](Tx& tx) {
      return RegisterHost(tx, {"hook-host", "eu-west", "eu-west-a", {{0, 80LL << 30, "GPU-h-0", "H100-80GB"}}},
                          *ParseTime(period_ + "-01T00:00:00Z"))
          .host_id;
    });
    const std::string through = day + "T13:00:00Z";
    Exec("INSERT INTO host_watermarks (host_id, sampled_through, last_batch_seq, last_batch_at, clock_skew_ms, "
         "folded_through) VALUES ($1, $2, 1, $2, 0, $2)",
         host, through);
    for (int i = 0; i < 3; ++i) {
      const std::string t = NewId("ten"), ins = "ins_hook" + std::to_string(i);
      tenants_.push_back(t);
      const std::string from = day + "T11:00:00Z", to = day + "T12:00:00Z";
      Exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ($1, $2, 4)", t, "hooked-" + std::to_string(i));
      Exec("INSERT INTO instances (id, tenant_id, name, instance_type, gpu_model, gpus, region, market, state, host_id, "
           "started_at, ended_at, end_reason) VALUES ($1, $2, 'job', 'h100.1x', 'H100-80GB', 1, "
           "'eu-west', 'on_demand', 'terminated', $3, $4, $5, 'terminated')",
           ins, t, host, from, to);
      Exec("INSERT INTO usage_rated_hourly (hour, instance_id, tenant_id, market, price_micros_per_gpu_hour, gpu_ms) "
           "VALUES ($1, $2, $3, 'on_demand', 2000000, 3600000)",
           from, ins, t);
      Exec("INSERT INTO billing_dirty (tenant_id, period, marked_at) VALUES ($1, $2, now()) ON CONFLICT DO NOTHING", t,
           period_);
    }
  }
  template <class... Params>
  void Exec(const std::string& sql, const Params&... params) { ExecSql(*conn_, sql, params...); }
  template <class... Params>
  std::string One(const std::string& sql, const Params&... params) { return SqlValue(*conn_, sql, params...); }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "") {
    return fleet_->Call(method, path, key, body);
  }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<ApiServer> server_;
  std::unique_ptr<Fleet> fleet_;
  std::vector<std::string> tenants_, members_;
  std::string finance_, period_;
};

TEST_F(WebhooksE2e, EveryEventReachesAReceiverExactlyOnceByIdAcrossAKillDuringDelivery) {
  Receiver receiver;
  const std::string base = "http://127.0.0.1:" + std::to_string(receiver.port());

  // Targets: https, or http to a host the config allows; known event types only.
  for (const std::string& bad : {std::string(R"({"url":"http://hooks.example/x","events":["invoice.finalized"]})"),
                                std::string(R"({"url":"ftp://127.0.0.1/x","events":["invoice.finalized"]})"),
                                R"({"url":")" + base + R"(/hook","events":["invoice.paid"]})",
                                R"({"url":")" + base + R"(/hook","events":[]})"}) {
    const auto r = Call("POST", "/v1/webhooks", finance_, bad);
    EXPECT_EQ(r.status, 422) << bad << ": " << r.body;
  }
  // Finance takes every tenant's invoices and credit notes; a member its own tenant's invoices; a
  // third endpoint answers with a redirect, which is never followed.
  auto r = Call("POST", "/v1/webhooks", finance_,
                R"({"url":")" + base + R"(/hook","events":["invoice.finalized","credit_note.created"],"description":"ledger"})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string finance_secret = Str(Json(r), "secret");
  EXPECT_TRUE(Json(r).at("tenant_id").is_null());
  r = Call("POST", "/v1/webhooks", members_[0], R"({"url":")" + base + R"(/mine","events":["invoice.finalized"]})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string member_secret = Str(Json(r), "secret"), member_hook = Str(Json(r), "id");
  EXPECT_EQ(Str(Json(r), "tenant_id"), tenants_[0]);
  r = Call("POST", "/v1/webhooks", finance_, R"({"url":")" + base + R"(/redirect","events":["credit_note.created"]})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string redirect_hook = Str(Json(r), "id");
  // The secret is shown once: never in a listing. A member lists its own tenant's only.
  const auto listed = Call("GET", "/v1/webhooks", finance_);
  EXPECT_EQ(listed.body.find("whsec_"), std::string::npos);
  EXPECT_EQ(Json(listed).at("data").as_array().size(), 3u);
  EXPECT_EQ(Json(Call("GET", "/v1/webhooks", members_[0])).at("data").as_array().size(), 1u);
  EXPECT_EQ(Json(Call("GET", "/v1/webhooks", members_[1])).at("data").as_array().size(), 0u);
  EXPECT_EQ(Call("DELETE", "/v1/webhooks/" + member_hook, members_[1]).status, 404);

  // The drafts are written; the receiver holds the first delivery; finance closes the month: three
  // invoices finalized, four deliveries (three to finance's endpoint, one to the member's).
  ASSERT_TRUE(WaitFor([&] { return One("SELECT count(*) FROM invoices WHERE period = $1", period_) == "3"; }, 30s));
  receiver.Hold();
  r = Call("POST", "/v1/billing/periods/" + period_ + "/close", finance_);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("invoices").as_int64(), 3);
  EXPECT_EQ(One("SELECT count(*) FROM webhook_events"), "3");
  EXPECT_EQ(One("SELECT count(*) FROM webhook_deliveries"), "4");
  ASSERT_TRUE(WaitFor([&] { return receiver.holding(); }, 20s)) << server_->process().Stderr();

  // kill -9 while that delivery waits for its answer; then the apiserver comes back.
  server_->process().Stop(SIGKILL);
  receiver.Release();
  server_->Restart();
  ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();

  // A credit note after the restart: a fifth delivery (and one to the redirecting endpoint).
  const std::string invoice = One("SELECT id FROM invoices WHERE tenant_id = $1", tenants_[1]);
  r = Call("POST", "/v1/billing/invoices/" + invoice + "/credit-notes", finance_, R"({"amount":"0.50","reason":"goodwill"})");
  ASSERT_EQ(r.status, 201) << r.body;

  // Deduplicated by event id, per endpoint, the receiver has each of the five exactly once.
  std::set<std::pair<std::string, std::string>> distinct;
  ASSERT_TRUE(WaitFor(
      [&] {
        distinct.clear();
        for (const auto& g : receiver.got())
          if (g.path != "/redirect") distinct.insert({g.path, g.id});
        return distinct.size() == 5;
      },
      60s))
      << distinct.size() << " distinct; " << server_->process().Stderr();
  const auto got = receiver.got();
  std::size_t to_endpoints = 0;
  for (const auto& g : got) {
    if (g.path == "/redirect") continue;
    ++to_endpoints;
    // Signed: HMAC-SHA256 over "<timestamp>.<body>" with the endpoint's secret; the id in the header
    // is the body's.
    const std::string& secret = g.path == "/mine" ? member_secret : finance_secret;
    EXPECT_EQ(g.signature, webhooks::Signature(secret, std::stoll(g.timestamp), g.body)) << g.body;
    const auto body = boost::json::parse(g.body);
    EXPECT_EQ(Str(body, "id"), g.id);
    EXPECT_EQ(Str(body, "type"), g.type);
    if (g.path == "/mine") {
      EXPECT_EQ(Str(body, "tenant_id"), tenants_[0]);
    }
    if (g.type == "invoice.finalized") {
      EXPECT_EQ(Str(body.at("data"), "total"), "2.00") << g.body;
    }
  }
  EXPECT_GT(to_endpoints, distinct.size()) << "the delivery in flight at the kill was delivered again";
  std::set<std::pair<std::string, std::string>> expected;
  {
    pqxx::nontransaction tx(*conn_);
    for (const auto& row : tx.exec("SELECT e.url, d.event_id FROM webhook_deliveries d JOIN webhook_endpoints e "
                                   "ON e.id = d.endpoint_id WHERE e.url NOT LIKE '%/redirect'"))
      expected.insert({row[0].as<std::string>().substr(base.size()), row[1].as<std::string>()});
  }
  EXPECT_EQ(distinct, expected);
  // The redirect was an answer like any other: not delivered, to be tried again, never followed.
  ASSERT_TRUE(WaitFor([&] {
    return One("SELECT last_status FROM webhook_deliveries WHERE endpoint_id = $1", redirect_hook) == "302";
  }, 20s));
  EXPECT_EQ(One("SELECT delivered_at IS NULL FROM webhook_deliveries WHERE endpoint_id = $1", redirect_hook), "t");
  // SREs see it.
  EXPECT_TRUE(WaitFor([&] {
    const auto m = Http(server_->admin_port(), "GET", "/metrics").body;
    return m.find("spillway_webhook_deliveries_total{result=\"failed\"}") != std::string::npos &&
           m.find("spillway_webhook_backlog 1") != std::string::npos &&  // the redirecting one
           m.find("\nspillway_webhook_leader 1\n") != std::string::npos;
  }, 20s)) << Http(server_->admin_port(), "GET", "/metrics").body.substr(0, 200);
  // A member deletes its own webhook; pending deliveries to it are dropped.
  EXPECT_EQ(Call("DELETE", "/v1/webhooks/" + member_hook, members_[0]).status, 200);
  EXPECT_EQ(Call("DELETE", "/v1/webhooks/" + member_hook, members_[0]).status, 404);
}

namespace {

// A receiver whose answer a test switches: 200, 500, or none at all (it reads the request and hangs
// until the mode changes or the sender gives up). Records each request's path, event id and when
// it arrived.
class ModalReceiver : public LoopbackServer {
 public:
  enum Mode { kOk, kFail, kHang };
  struct Got {
    std::string path, id;
    TimeMs at;
  };
  ModalReceiver() { Listen(); }
  ~ModalReceiver() override { StopListening(); }
  void Set(Mode m) { mode_ = m; }
  std::vector<Got> got() {
    std::lock_guard lock(mu_);
    return got_;
  }

 private:
  void Serve(int c) override {
    std::string in;
    std::size_t end = 0, length = 0;
    if (!ReadRequest(c, 5, in, end, length)) {
      ::close(c);
      return;
    }
    const Mode mode = mode_;
    std::string head = in.substr(0, end);
    const auto id_at = head.find("Spillway-Event-Id: ");
    Got g{in.substr(in.find(' ') + 1, in.find(' ', in.find(' ') + 1) - in.find(' ') - 1),
          id_at == std::string::npos ? "" : head.substr(id_at + 19, head.find("\r\n", id_at) - id_at - 19),
          SystemClockInstance().Now()};
    if (mode == kHang) {
      while (mode_ == kHang && !stop_) std::this_thread::sleep_for(20ms);
      ::close(c);  // never answered
      return;
    }
    {
      std::lock_guard lock(mu_);
      if (mode == kOk) got_.push_back(g);
    }
    const std::string reply = mode == kOk ? "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                                          : "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
    ::close(c);
  }
  std::atomic<Mode> mode_{kOk};
  std::mutex mu_;
  std::vector<Got> got_;
};

}  // namespace

// Each endpoint is a queue of its own: beside a receiver that answers 500, then hangs (accepts and
// never answers), then recovers, a healthy receiver's deliveries are late by at most a second
// (p99, from each event's creation to its arrival), and both get every event exactly once by id.
TEST(WebhookQueues, AHangingOrFailingReceiverNeverDelaysAnotherEndpoint) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  auto env = FastFleetEnv();
  env["SPILLWAY_WEBHOOKS_HTTP_HOSTS"] = "127.0.0.1";
  env["SPILLWAY_WEBHOOKS_TIMEOUT"] = "3s";
  env["SPILLWAY_WEBHOOKS_RETRY_BASE"] = "200ms";
  env["SPILLWAY_WEBHOOKS_RETRY_MAX"] = "2s";
  ApiServer server(db.dsn(), env);
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  Fleet fleet(db, server);
  const std::string finance = fleet.NewKey(fleet.operator_tenant, "finance");
  const std::string tenant = fleet.NewTenant("hooked", 1);
  ModalReceiver flaky, healthy;
  for (const auto& [r, path] : {std::pair{&flaky, "/flaky"}, std::pair{&healthy, "/healthy"}}) {
    const auto made = fleet.Call("POST", "/v1/webhooks", finance,
                                 R"({"url":"http://127.0.0.1:)" + std::to_string(r->port()) + path +
                                     R"(","events":["credit_note.created"]})");
    ASSERT_EQ(made.status, 201) << made.body;
  }
  // An event every 100 ms: 6 s while the flaky one answers 500, 6 s while it hangs, 3 s after it
  // recovered.
  std::map<std::string, TimeMs> created;
  const auto emit_for = [&](std::chrono::milliseconds span) {
    const auto until = std::chrono::steady_clock::now() + span;
    while (std::chrono::steady_clock::now() < until) {
      const TimeMs now = SystemClockInstance().Now();
      const std::string id = InTransaction(*conn, [&](Tx& tx) {
        return webhooks::Emit(tx, "credit_note.created", tenant, R"({"n":)" + std::to_string(created.size()) + "}", now);
      });
      created[id] = now;
      std::this_thread::sleep_for(100ms);  // the pace of events is what is tested
    }
  };
  flaky.Set(ModalReceiver::kFail);
  emit_for(6s);
  flaky.Set(ModalReceiver::kHang);
  emit_for(6s);
  flaky.Set(ModalReceiver::kOk);
  emit_for(3s);
  const auto ids = [](ModalReceiver& r) {
    std::set<std::string> out;
    for (const auto& g : r.got()) out.insert(g.id);
    return out;
  };
  std::set<std::string> all;
  for (const auto& [id, at] : created) all.insert(id);
  ASSERT_TRUE(WaitFor([&] { return ids(healthy) == all && ids(flaky) == all; }, 90s))
      << ids(healthy).size() << " and " << ids(flaky).size() << " of " << all.size() << "; "
      << server.process().Stderr().substr(0, 2000);
  // Exactly once by id at the healthy one (it never failed), each within a second of its event.
  std::vector<double> delays;
  for (const auto& g : healthy.got()) delays.push_back(std::chrono::duration<double>(g.at - created[g.id]).count());
  EXPECT_EQ(delays.size(), all.size()) << "the healthy receiver got an event twice";
  std::sort(delays.begin(), delays.end());
  const double p50 = delays[delays.size() / 2], p99 = delays[(delays.size() * 99) / 100], max = delays.back();
  std::printf("webhooks: %zu events; healthy receiver's delay beside one that failed, hung and recovered: p50 %.3f s, "
              "p99 %.3f s, max %.3f s\n",
              all.size(), p50, p99, max);
  EXPECT_LE(p99, 1.0);
  // And every delivery is recorded delivered (the last ones at the pass after their answers).
  EXPECT_TRUE(WaitFor([&] { return SqlValue(*conn, "SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NULL") == "0"; },
                      5s));
}

// https targets: the peer's certificate is checked (against webhooks.ca_file here, a self-signed
// one), a certificate no trusted CA signed is refused at the handshake, and the request arrives.
TEST(WebhookTls, AnHttpsTargetIsDeliveredOnlyOverAVerifiedConnection) {
  const std::string dir = "/tmp/spw-webhook-tls-" + std::to_string(::getpid());
  std::string out;
  ASSERT_EQ(RunCommand({"/bin/mkdir", "-p", dir}, {}, &out), 0);
  ASSERT_EQ(RunCommand({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem"},
                       {}, &out),
            0)
      << out;
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  ASSERT_EQ(SSL_CTX_use_certificate_file(ctx, (dir + "/cert.pem").c_str(), SSL_FILETYPE_PEM), 1);
  ASSERT_EQ(SSL_CTX_use_PrivateKey_file(ctx, (dir + "/key.pem").c_str(), SSL_FILETYPE_PEM), 1);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 8), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const std::string port = std::to_string(ntohs(a.sin_port));
  std::vector<std::string> bodies;
  std::thread server([&] {
    for (int i = 0; i < 2; ++i) {  // the refused handshake, then the delivery
      const int c = ::accept(fd, nullptr, nullptr);
      SSL* ssl = SSL_new(ctx);
      SSL_set_fd(ssl, c);
      if (SSL_accept(ssl) == 1) {
        std::string in;
        char buf[4096];
        int n;
        while (in.find("\r\n\r\n") == std::string::npos || in.size() < in.find("\r\n\r\n") + 4 + 12) {
          if ((n = SSL_read(ssl, buf, sizeof buf)) <= 0) break;
          in.append(buf, static_cast<std::size_t>(n));
        }
        bodies.push_back(in);
        const std::string reply = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        SSL_write(ssl, reply.data(), static_cast<int>(reply.size()));
        SSL_shutdown(ssl);
      }
      SSL_free(ssl);
      ::close(c);
    }
  });
  const http::OutboundRequest req{"https", "localhost", port, "/hook", {{"Spillway-Event-Id", "evt_tls"}}, R"({"id":"evt_tls"})"};
  auto r = http::Post(req, 5s);  // the system's CAs only: not this certificate
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.error.find("TLS handshake"), std::string::npos) << r.error;
  r = http::Post(req, 5s, dir + "/cert.pem");
  EXPECT_EQ(r.status, 204) << r.error;
  server.join();
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_EQ(bodies[0].rfind("POST /hook HTTP/1.1\r\n", 0), 0u) << bodies[0];
  EXPECT_NE(bodies[0].find("Spillway-Event-Id: evt_tls"), std::string::npos) << bodies[0];
  ::close(fd);
  SSL_CTX_free(ctx);
  RunCommand({"/bin/rm", "-rf", dir}, {}, &out);
}
