#pragma once
// A small fleet for the end-to-end tests: an apiserver with fast controllers, simulated agents,
// an operator key and a customer tenant with a member key.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <fstream>
#include <sstream>

#include "core/money.hpp"
#include "tests/support/test_support.hpp"

namespace spillway::test {

inline boost::json::value Json(const HttpResponse& r) { return boost::json::parse(r.body.empty() ? "null" : r.body); }
inline std::string Str(const boost::json::value& v, const char* k) {
  const auto& f = v.at(k);
  return f.is_null() ? "" : std::string(f.as_string());
}

inline std::map<std::string, std::string> FastFleetEnv() {
  return {{"SPILLWAY_AGENT_BOOTSTRAP_TOKEN", "test-bootstrap-token"},
          {"SPILLWAY_AGENT_HEARTBEAT_INTERVAL", "500ms"},
          {"SPILLWAY_CONTROLLERS_TICK", "200ms"},
          {"SPILLWAY_SPOT_REPRICE_INTERVAL", "1s"},
          {"SPILLWAY_SPOT_PREEMPTION_NOTICE", "3s"},
          {"SPILLWAY_FLEET_HEARTBEAT_TIMEOUT", "3s"},
          {"SPILLWAY_FLEET_INSTANCE_REPORT_GRACE", "5s"}};
}

class Fleet {
 public:
  Fleet(const TestDb& db, ApiServer& server) : Fleet(db.dsn(), server) {}
  Fleet(const std::string& dsn, ApiServer& server) : server_(server) {
    char tmpl[] = "/tmp/spw-agents-XXXXXX";
    state_dir = ::mkdtemp(tmpl);
    admin = BootstrapAdmin(dsn);
    const auto tenants = Json(Call("GET", "/v1/tenants", admin));
    for (const auto& t : tenants.at("data").as_array())  // the operator's own, made by bootstrap-admin
      if (Str(t, "name") == "operator") operator_tenant = Str(t, "id");
    operator_key = NewKey(operator_tenant, "operator");
  }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "", std::map<std::string, std::string> headers = {}) {
    return Http(server_.port(), method, path, key, body, std::move(headers));
  }
  int port() const { return server_.port(); }
  std::string NewTenant(const std::string& name, int quota) {
    const auto r = Call("POST", "/v1/tenants", admin,
                        "{\"name\":\"" + name + "\",\"gpu_quota\":" + std::to_string(quota) + "}");
    return Str(Json(r), "id");
  }
  std::string NewKey(const std::string& tenant, const std::string& role) {
    const auto r = Call("POST", "/v1/tenants/" + tenant + "/api-keys", admin, "{\"role\":\"" + role + "\"}");
    return Str(Json(r), "secret");
  }
  // api_port: where the agents reach the apiserver (0: its own port; a PartitionProxy's, say).
  std::unique_ptr<Process> StartAgent(const std::string& region, const std::string& model, int hosts, int gpus,
                                      std::vector<std::string> extra = {}, int api_port = 0) {
    std::vector<std::string> argv = {AgentBinary(), "--api",
                                     "http://127.0.0.1:" + std::to_string(api_port ? api_port : server_.port()),
                                     "--bootstrap-token", "test-bootstrap-token", "--region", region,
                                     "--gpu-model", model, "--gpus-per-host", std::to_string(gpus),
                                     "--simulate-hosts", std::to_string(hosts), "--boot-delay", "300ms",
                                     "--hostname", "t" + std::to_string(::getpid()) + "-" + model,
                                     "--state-dir", state_dir};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Process>(argv, std::map<std::string, std::string>{});
  }
  // The pool's entry in GET /v1/capacity (null when absent).
  boost::json::value Pool(const std::string& region, const std::string& model) {
    const auto res = Call("GET", "/v1/capacity", operator_key);
    EXPECT_EQ(res.status, 200) << res.body;
    if (res.status != 200) return nullptr;
    const auto r = Json(res);
    for (const auto& p : r.at("data").as_array())
      if (Str(p, "region") == region && Str(p, "gpu_model") == model) return p;
    return nullptr;
  }
  std::int64_t PoolInt(const std::string& region, const std::string& model, const char* field) {
    const auto p = Pool(region, model);
    return p.is_null() ? -1 : p.at(field).as_int64();
  }
  boost::json::value Instance(const std::string& key, const std::string& id) {
    return Json(Call("GET", "/v1/instances/" + id, key));
  }
  bool WaitState(const std::string& key, const std::string& id, const std::string& state,
                 std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    return WaitFor([&] { return Str(Instance(key, id), "state") == state; }, timeout);
  }

  // Until the instance's metering coverage (GET /v1/usage) reaches `at_least`; the last seen in *seen.
  bool WaitCoverage(const std::string& key, const std::string& id, double at_least, std::chrono::milliseconds timeout,
                    double* seen) {
    return WaitFor(
        [&] {
          const auto u = Json(Call("GET", "/v1/usage?instance_id=" + id, key));
          for (const auto& i : u.at("instances").as_array())
            if (Str(i, "instance_id") == id && i.at("coverage").is_number()) *seen = i.at("coverage").to_number<double>();
          return *seen >= at_least;
        },
        timeout);
  }

  // Instances outlive their agents: at the end, whatever the exec runtimes left running goes too.
  ~Fleet() {
    RunCommand({"/bin/sh", "-c",
                "for f in " + state_dir + "/*/*.state; do [ -f \"$f\" ] && kill -KILL -$(sed -n 's/^pid=//p' \"$f\") "
                "2>/dev/null; done; rm -rf " + state_dir},
               {}, nullptr);
  }

  std::string admin, operator_tenant, operator_key;
  std::string state_dir;  // the agents' --state-dir

 private:
  ApiServer& server_;
};

// The `spillway` CLI as a user runs it, with HOME=home, stdout and stderr apart (piped: not a
// terminal, so JSON by default and no progress lines).
inline std::string ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct CliRun {
  int rc = -1;
  std::string out, err;
};
inline CliRun RunCli(const std::string& home, const std::vector<std::string>& args,
                     const std::map<std::string, std::string>& env = {}) {
  auto quote = [](const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  };
  std::string cmd = "HOME=" + quote(home) + " ";
  for (const auto& [k, v] : env) cmd += k + "=" + quote(v) + " ";
  cmd += quote(SPILLWAY_CLI_BIN);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " >" + home + "/cli.out 2>" + home + "/cli.err";
  CliRun r;
  r.rc = RunCommand({"/bin/sh", "-c", cmd}, {}, nullptr);
  r.out = ReadWhole(home + "/cli.out");
  r.err = ReadWhole(home + "/cli.err");
  return r;
}

// An apiserver with fast controllers on a database of its own, its Fleet, and a customer tenant
// (quota `quota`) with a member key.
class FleetTest : public ::testing::Test {
 protected:
  void StartFleet(int quota) {
    db_ = std::make_unique<TestDb>();
    server_ = std::make_unique<ApiServer>(db_->dsn(), FastFleetEnv());
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
    tenant_ = fleet_->NewTenant("customer", quota);
    member_ = fleet_->NewKey(tenant_, "member");
  }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<ApiServer> server_;
  std::unique_ptr<Fleet> fleet_;
  std::string tenant_, member_;
};

}  // namespace spillway::test
