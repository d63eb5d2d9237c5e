// PROTOCOL.md's agent side, spoken directly: registration and re-registration, long-polled
// assignments, heartbeats, and reconciliation of instances a host stops reporting.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {
const std::string kBootstrap = "test-bootstrap-token";
std::string HostBody(const std::string& hostname, const std::string& uuid_prefix) {
  std::string gpus;
  for (int i = 0; i < 2; ++i)
    gpus += std::string(i ? "," : "") + R"({"index":)" + std::to_string(i) + R"(,"uuid":")" + uuid_prefix +
            std::to_string(i) + R"(","model":"H100-80GB","memory_bytes":85899345920})";
  return R"({"hostname":")" + hostname + R"(","region":"eu-north","zone":"eu-north-1a","gpus":[)" + gpus + "]}";
}
}  // namespace

class AgentProtocol : public FleetTest {
 protected:
  void SetUp() override { StartFleet(8); }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key, const std::string& body = "") {
    return fleet_->Call(method, path, key, body);
  }
};

TEST_F(AgentProtocol, RegistrationIsIdempotentPerHostAndRotatesTheToken) {
  EXPECT_EQ(Call("POST", "/v1/agent/register", "wrong-token", HostBody("gpu-1", "GPU-a")).status, 401);
  auto r = Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-1", "GPU-a"));
  ASSERT_EQ(r.status, 201) << r.body;
  const auto first = Json(r);
  EXPECT_EQ(first.at("sample_interval_ms").as_int64(), 10000);
  EXPECT_EQ(first.at("heartbeat_interval_ms").as_int64(), 500);
  const std::string old_token = Str(first, "host_token");
  EXPECT_EQ(Call("POST", "/v1/agent/heartbeat", old_token, R"({"instances":[],"agent_version":"t"})").status, 200);

  r = Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-1", "GPU-a"));  // same host again
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r), "host_id"), Str(first, "host_id"));
  const std::string new_token = Str(Json(r), "host_token");
  EXPECT_NE(new_token, old_token);
  EXPECT_EQ(Call("POST", "/v1/agent/heartbeat", old_token, R"({"instances":[]})").status, 401);  // revoked
  EXPECT_EQ(Call("POST", "/v1/agent/heartbeat", new_token, R"({"instances":[]})").status, 200);

  EXPECT_EQ(Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-1", "GPU-other")).status, 409);
  EXPECT_EQ(Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-2", "GPU-a")).status, 409);  // GPUs taken
  EXPECT_EQ(Call("POST", "/v1/agent/register", kBootstrap,
                 R"({"hostname":"x","region":"r","zone":"z","gpus":[{"index":0,"uuid":"u","model":"TPU"}]})").status,
            422);
  EXPECT_EQ(Call("POST", "/v1/agent/heartbeat", new_token, R"({"instances":[{"id":"ins_x","state":"dancing"}]})").status, 422);
}

TEST_F(AgentProtocol, AssignmentsLongPollWakesOnChangeAndHeartbeatsMoveInstances) {
  const auto reg = Json(Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-1", "GPU-a")));
  const std::string token = Str(reg, "host_token");
  auto a = Json(Call("GET", "/v1/agent/assignments?version=-1&wait=20", token));  // a stale version: at once
  const std::int64_t version = a.at("version").as_int64();
  EXPECT_EQ(a.at("instances").as_array().size(), 0u);

  // Nothing changes: the poll waits out its `wait`.
  const auto t0 = std::chrono::steady_clock::now();
  a = Json(Call("GET", "/v1/agent/assignments?version=" + std::to_string(version) + "&wait=1", token));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);
  EXPECT_EQ(a.at("version").as_int64(), version);

  // A change wakes a waiting poll long before its 20 s are up.
  auto poll = std::async(std::launch::async, [&] {
    return Call("GET", "/v1/agent/assignments?version=" + std::to_string(version) + "&wait=20", token);
  });
  std::this_thread::sleep_for(300ms);
  const auto created = Call("POST", "/v1/instances", member_,
                            R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})");
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string id = Str(Json(created), "id");
  ASSERT_EQ(poll.wait_for(10s), std::future_status::ready) << "the long poll did not wake on the change";
  a = Json(poll.get());
  EXPECT_GT(a.at("version").as_int64(), version);
  ASSERT_EQ(a.at("instances").as_array().size(), 1u);
  const auto& assigned = a.at("instances").as_array()[0];
  EXPECT_EQ(Str(assigned, "id"), id);
  EXPECT_EQ(Str(assigned, "desired_state"), "running");
  EXPECT_EQ(assigned.at("gpu_indices").as_array().size(), 1u);
  EXPECT_TRUE(assigned.at("preempt_at").is_null());

  // The host reports it running: the customer sees it running.
  ASSERT_EQ(Call("POST", "/v1/agent/heartbeat", token, R"({"instances":[{"id":")" + id + R"(","state":"running"}]})").status, 200);
  EXPECT_EQ(Str(fleet_->Instance(member_, id), "state"), "running");
  // Terminated by the customer: desired stopped; the host reports it stopped: terminated.
  ASSERT_EQ(Call("DELETE", "/v1/instances/" + id, member_).status, 200);
  a = Json(Call("GET", "/v1/agent/assignments?version=" + std::to_string(version) + "&wait=0", token));
  EXPECT_EQ(Str(a.at("instances").as_array().at(0), "desired_state"), "stopped");
  ASSERT_EQ(Call("POST", "/v1/agent/heartbeat", token, R"({"instances":[{"id":")" + id + R"(","state":"stopped"}]})").status, 200);
  EXPECT_EQ(Str(fleet_->Instance(member_, id), "state"), "terminated");
  a = Json(Call("GET", "/v1/agent/assignments?version=0&wait=0", token));
  EXPECT_EQ(a.at("instances").as_array().size(), 0u);  // absent: it must not run
}

// A held long poll leaves its connection's coroutine while it waits (the transport parks the socket
// as a small record) and an idle keep-alive connection waits for its next request's first byte with
// no read buffer. Neither may show on the wire: the connection stays open and in order throughout.
TEST_F(AgentProtocol, AHeldPollKeepsItsConnectionInOrderForWhatFollows) {
  const std::string token = Str(Json(Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-1", "GPU-a"))), "host_token");
  HttpConn c(fleet_->port());
  ASSERT_TRUE(c.ok());
  auto r = c.Call("GET", "/v1/agent/assignments?version=-1&wait=20", token);  // answered at once, though it may be held
  ASSERT_EQ(r.status, 200) << r.body;
  const std::int64_t version = Json(r).at("version").as_int64();
  const std::string poll = "/v1/agent/assignments?version=" + std::to_string(version);

  // Held for its whole wait, then answered on the same connection, which serves on.
  const auto t0 = std::chrono::steady_clock::now();
  r = c.Call("GET", poll + "&wait=1", token);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.Header("connection"), "close");
  EXPECT_EQ(c.Call("POST", "/v1/agent/heartbeat", token, R"({"instances":[]})").status, 200);

  // Held, then woken by a launch: the answer comes back on this connection.
  auto woken = std::async(std::launch::async, [&] { return c.Call("GET", poll + "&wait=20", token); });
  std::this_thread::sleep_for(300ms);
  ASSERT_EQ(Call("POST", "/v1/instances", member_, R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})").status, 201);
  ASSERT_EQ(woken.wait_for(10s), std::future_status::ready);
  r = woken.get();
  ASSERT_EQ(r.status, 200) << r.body;
  const std::int64_t changed = Json(r).at("version").as_int64();
  EXPECT_GT(changed, version);

  // A poll with a request pipelined behind it: both answered, in order, the poll after its wait.
  const std::string head = "Host: x\r\nAuthorization: Bearer " + token + "\r\n";
  c.SendRaw("GET /v1/agent/assignments?version=" + std::to_string(changed) + "&wait=1 HTTP/1.1\r\n" + head +
            "X-Request-Id: held-1\r\n\r\n" + "GET /v1/agent/assignments?version=-1 HTTP/1.1\r\n" + head +
            "X-Request-Id: after-1\r\n\r\n");
  auto first = c.Read(), second = c.Read();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->Header("x-request-id"), "held-1");
  EXPECT_EQ(second->Header("x-request-id"), "after-1");
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(second->status, 200);

  // An idle connection's next request arriving a byte, then the rest, later: read whole.
  c.SendRaw("G");
  std::this_thread::sleep_for(200ms);
  c.SendRaw("ET /v1/agent/assignments?version=-1 HTTP/1.1\r\n" + head + "X-Request-Id: split-1\r\n\r\n");
  auto split = c.Read();
  ASSERT_TRUE(split);
  EXPECT_EQ(split->status, 200) << split->body;
  EXPECT_EQ(split->Header("x-request-id"), "split-1");
}

TEST_F(AgentProtocol, AnInstanceTheHostStopsReportingIsFailedAfterTheGrace) {
  const auto reg = Json(Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-1", "GPU-a")));
  const std::string token = Str(reg, "host_token");
  const auto created = Call("POST", "/v1/instances", member_,
                            R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})");
  const std::string id = Str(Json(created), "id");
  ASSERT_EQ(Call("POST", "/v1/agent/heartbeat", token, R"({"instances":[{"id":")" + id + R"(","state":"running"}]})").status, 200);
  // The host keeps heartbeating (so it is not down) but no longer mentions the instance.
  std::atomic<bool> stop{false};
  std::thread beat([&] {
    while (!stop) {
      Call("POST", "/v1/agent/heartbeat", token, R"({"instances":[]})");
      std::this_thread::sleep_for(300ms);
    }
  });
  const bool failed = fleet_->WaitState(member_, id, "failed", 20s);
  stop = true;
  beat.join();
  ASSERT_TRUE(failed);
  EXPECT_EQ(Str(fleet_->Instance(member_, id), "end_reason"), "lost");
  EXPECT_EQ(fleet_->PoolInt("eu-north", "H100-80GB", "on_demand_gpus"), 0);  // its GPU is free again
  EXPECT_EQ(Str(Json(Call("GET", "/v1/hosts?region=eu-north", fleet_->operator_key)).at("data").as_array().at(0), "health"), "up");
}

TEST_F(AgentProtocol, HostsSayWhatTheyOfferAtRegistration) {
  std::string body = HostBody("gpu-1", "GPU-a");
  body.pop_back();  // the closing brace
  auto r = Call("POST", "/v1/agent/register", kBootstrap,
                body + R"(,"driver_version":"580.159.04","cuda_version":"12.8","public_address":"gpu-1.example.net",)"
                       R"("port_range":{"from":20000,"to":20999}})");
  ASSERT_EQ(r.status, 201) << r.body;
  const auto hosts = Json(Call("GET", "/v1/hosts?region=eu-north", fleet_->operator_key));
  const auto& h = hosts.at("data").as_array().at(0);
  EXPECT_EQ(Str(h, "driver_version"), "580.159.04");
  EXPECT_EQ(Str(h, "cuda_version"), "12.8");
  EXPECT_EQ(Str(h, "public_address"), "gpu-1.example.net");
  EXPECT_EQ(h.at("port_range").at("from").as_int64(), 20000);
  EXPECT_EQ(h.at("port_range").at("to").as_int64(), 20999);
  EXPECT_FALSE(h.at("simulated").as_bool());
  // A driver upgrade: registering again says so.
  r = Call("POST", "/v1/agent/register", kBootstrap, body + R"(,"driver_version":"590.1","cuda_version":"13.0"})");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto again = Json(Call("GET", "/v1/hosts?region=eu-north", fleet_->operator_key)).at("data").as_array().at(0);
  EXPECT_EQ(Str(again, "cuda_version"), "13.0");
  EXPECT_TRUE(again.at("port_range").is_null());
  for (const std::string bad : {R"(,"cuda_version":"twelve"})", R"(,"cuda_version":"12.8.1"})",
                                R"(,"port_range":{"from":30000,"to":20000}})", R"(,"port_range":{"from":80,"to":90}})",
                                R"(,"public_address":"a b"})", R"(,"simulated":"yes"})"}) {
    r = Call("POST", "/v1/agent/register", kBootstrap, body + bad);
    EXPECT_EQ(r.status, 422) << bad << " " << r.body;
  }
}
