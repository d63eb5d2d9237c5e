// The `spillway` CLI (issue #22) against a real apiserver and agent: profiles, every command at
// least once, tables and CSV read back and compared with the API's own answers, a launch waited
// to running, a refusal printed as a readable error with exit code 1, usage errors with 2.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <csignal>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "fleet_support.hpp"
#include "tests/support/focus_check.hpp"

namespace spillway::test {
namespace {

using namespace std::chrono_literals;

class Cli : public FleetTest {
 protected:
  void SetUp() override {
    StartFleet(1);  // one GPU: a second launch is refused (409)
    char tmpl[] = "/tmp/spillway-cli-home-XXXXXX";
    home_ = ::mkdtemp(tmpl);
    api_ = "http://127.0.0.1:" + std::to_string(server_->port());
  }
  void TearDown() override { std::filesystem::remove_all(home_); }
  CliRun Run(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {}) {
    return RunCli(home_, args, env);
  }
  std::string home_, api_;
};

TEST_F(Cli, ACustomerConfiguresLaunchesWaitsListsAndTerminates) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));

  // configure writes a 0600 profile whose key lives in a 0600 file of its own.
  auto r = Run({"configure", "--api", api_, "--key", member_});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string config = home_ + "/.config/spillway/config.toml";
  struct stat st {};
  ASSERT_EQ(::stat(config.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(ReadWhole(config).find("[default]"), std::string::npos);
  EXPECT_EQ(ReadWhole(config).find(member_), std::string::npos) << "the key is not in the config itself";
  ASSERT_EQ(::stat((home_ + "/.config/spillway/default.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // The catalog as CSV, read back.
  r = Run({"instance-types", "--output", "csv"});
  ASSERT_EQ(r.rc, 0) << r.err;
  auto rows = ParseCsv(r.out);
  ASSERT_GE(rows.size(), 2u);
  EXPECT_EQ(rows[0][0], "name");
  bool has_type = false;
  for (const auto& row : rows) has_type = has_type || row[0] == "h100.1x";
  EXPECT_TRUE(has_type) << r.out;

  // A launch waited to running; piped, so JSON and no progress line.
  r = Run({"instances", "launch", "--type", "h100.1x", "--region", "us-east", "--name", "cli-one", "--wait",
           "--timeout", "60s"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto launched = boost::json::parse(r.out);
  EXPECT_EQ(Str(launched, "state"), "running");
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << "no progress line when stderr is not a terminal";
  const std::string id = Str(launched, "id");

  // list: JSON when piped, a table and CSV when asked, each the API's own list.
  const auto api_list = Json(fleet_->Call("GET", "/v1/instances", member_)).at("data").as_array();
  ASSERT_EQ(api_list.size(), 1u);
  r = Run({"instances", "list"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(boost::json::parse(r.out).at("data").as_array(), api_list);
  r = Run({"instances", "list", "--output", "table"});
  ASSERT_EQ(r.rc, 0) << r.err;
  std::istringstream table(r.out);
  std::string header, line;
  std::getline(table, header);
  std::getline(table, line);
  EXPECT_EQ(header.rfind("ID", 0), 0u) << r.out;
  std::istringstream cells(line);
  std::vector<std::string> words{std::istream_iterator<std::string>(cells), {}};
  ASSERT_GE(words.size(), 6u) << line;
  EXPECT_EQ(words[0], id);
  EXPECT_EQ(words[1], "cli-one");
  EXPECT_EQ(words[5], "running");
  r = Run({"instances", "list", "--output", "csv"});
  rows = ParseCsv(r.out);
  ASSERT_EQ(rows.size(), 2u) << r.out;
  EXPECT_EQ(rows[0][0], "id");
  EXPECT_EQ(rows[1][0], id);
  EXPECT_EQ(rows[1][5], Str(api_list[0], "state"));
  EXPECT_EQ(rows[1][6], Str(api_list[0], "host_id"));
  r = Run({"instances", "get", id, "--output", "json"});
  EXPECT_EQ(boost::json::parse(r.out), Json(fleet_->Call("GET", "/v1/instances/" + id, member_)));

  // A refusal: the API's message and request id on stderr, exit 1, nothing on stdout.
  r = Run({"instances", "launch", "--type", "h100.1x", "--region", "us-east"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("quota"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("HTTP 409"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("request id "), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;

  // The rest of a customer's nouns answer.
  for (const std::vector<std::string>& cmd : {std::vector<std::string>{"spot-prices"}, {"ssh-keys", "list"},
                                              {"volumes", "list"}, {"usage"}, {"invoices", "list"}}) {
    r = Run(cmd);
    EXPECT_EQ(r.rc, 0) << cmd[0] << ": " << r.err;
    EXPECT_NO_THROW(boost::json::parse(r.out)) << cmd[0] << ": " << r.out;
  }

  r = Run({"instances", "terminate", id, "--wait", "--timeout", "60s"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(Str(boost::json::parse(r.out), "state"), "terminated");
}

TEST_F(Cli, ProfilesEnvironmentUsageErrorsAndCompletion) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  // An operator's profile beside the default; --profile picks it.
  ASSERT_EQ(Run({"configure", "--api", api_, "--key", member_}).rc, 0);
  ASSERT_EQ(Run({"configure", "--profile", "ops", "--api", api_, "--key", fleet_->operator_key}).rc, 0);
  auto r = Run({"--profile", "ops", "capacity", "--output", "csv"});
  ASSERT_EQ(r.rc, 0) << r.err;
  auto rows = ParseCsv(r.out);
  ASSERT_EQ(rows.size(), 2u) << r.out;
  EXPECT_EQ(rows[1][0], "us-east");
  EXPECT_EQ(rows[1][3], "8");  // total_gpus
  r = Run({"hosts", "list", "--profile", "ops", "--output", "csv"});
  ASSERT_EQ(r.rc, 0) << r.err;
  rows = ParseCsv(r.out);
  ASSERT_EQ(rows.size(), 2u) << r.out;
  r = Run({"hosts", "get", rows[1][0], "--profile", "ops"});
  EXPECT_EQ(r.rc, 0) << r.err;
  // The member may not: 403 from the API, exit 1.
  r = Run({"capacity"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("HTTP 403"), std::string::npos) << r.err;
  // SPILLWAY_API and SPILLWAY_API_KEY override the profile.
  r = Run({"tenants", "list", "--output", "csv"}, {{"SPILLWAY_API_KEY", fleet_->admin}});
  ASSERT_EQ(r.rc, 0) << r.err;
  rows = ParseCsv(r.out);
  EXPECT_GE(rows.size(), 3u) << r.out;  // the operator's tenant and the customer's
  r = Run({"tenants", "get", tenant_}, {{"SPILLWAY_API_KEY", fleet_->admin}});
  EXPECT_EQ(Str(boost::json::parse(r.out), "id"), tenant_);

  // Usage errors: exit 2 and nothing sent.
  EXPECT_EQ(Run({"--profile", "nosuch", "instances", "list"}).rc, 2);
  EXPECT_EQ(Run({"instances", "launch", "--region", "us-east"}).rc, 2);  // no --type
  EXPECT_EQ(Run({"instances", "list", "--colour", "red"}).rc, 2);
  EXPECT_EQ(Run({"instances", "get"}).rc, 2);
  EXPECT_EQ(Run({"instances", "list", "--output", "yaml"}).rc, 2);
  EXPECT_EQ(Run({"nosuch"}).rc, 2);
  EXPECT_EQ(Json(fleet_->Call("GET", "/v1/instances", member_)).at("data").as_array().size(), 0u);
  // An unreachable API is exit 1.
  EXPECT_EQ(Run({"instances", "list"}, {{"SPILLWAY_API", "http://127.0.0.1:1"}}).rc, 1);

  // Help for each command, and completion scripts bash accepts.
  r = Run({"instances", "launch", "--help"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("--max-price"), std::string::npos);
  r = Run({"completion", "bash"});
  ASSERT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("complete -F _spillway spillway"), std::string::npos);
  std::ofstream(home_ + "/completion.bash") << r.out;
  EXPECT_EQ(RunCommand({"/bin/bash", "-n", home_ + "/completion.bash"}, {}, nullptr), 0);
  EXPECT_EQ(Run({"completion", "zsh"}).rc, 0);
}


TEST_F(Cli, SshKeysVolumesSshReservationsAndApiKeys) {
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8,
                                  {"--public-address", "gpu-9.example.test", "--port-range", "22000-22009"});
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  const std::map<std::string, std::string> member = {{"SPILLWAY_API", api_}, {"SPILLWAY_API_KEY", member_}};
  std::ofstream(home_ + "/alice.pub")
      << "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqzKrdyTTFE3V4KeapNNRa6weyLwwp99yqnlQ9XqnNG alice@laptop\n";
  auto r = Run({"ssh-keys", "add", "--name", "alice", "--public-key-file", home_ + "/alice.pub"}, member);
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string key_id = Str(boost::json::parse(r.out), "id");
  r = Run({"ssh-keys", "list", "--output", "csv"}, member);
  auto rows = ParseCsv(r.out);
  ASSERT_EQ(rows.size(), 2u) << r.out;
  EXPECT_EQ(rows[1][0], key_id);
  EXPECT_EQ(rows[1][1], "alice");

  // ssh: the CLI execs ssh with the instance's endpoint (a stand-in ssh on PATH prints its argv).
  r = Run({"instances", "launch", "--type", "h100.1x", "--region", "us-east", "--ssh-key", key_id, "--wait"}, member);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto inst = boost::json::parse(r.out);
  const std::string id = Str(inst, "id");
  ASSERT_TRUE(inst.at("ssh").is_object()) << inst;
  ::mkdir((home_ + "/bin").c_str(), 0755);
  std::ofstream(home_ + "/bin/ssh") << "#!/bin/sh\necho \"ssh $*\"\n";
  ::chmod((home_ + "/bin/ssh").c_str(), 0755);
  auto with_ssh = member;
  with_ssh["PATH"] = home_ + "/bin:/usr/bin:/bin";
  r = Run({"instances", "ssh", id, "--identity", "/keys/alice"}, with_ssh);
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string port = std::to_string(inst.at("ssh").at("port").as_int64());
  EXPECT_EQ(r.out, "ssh -p " + port + " -i /keys/alice root@gpu-9.example.test\n");
  r = Run({"ssh", id}, with_ssh);  // the short form
  EXPECT_EQ(r.out, "ssh -p " + port + " root@gpu-9.example.test\n") << r.err;
  // wait: already running, it returns at once with the instance.
  r = Run({"instances", "wait", id, "--state", "running", "--timeout", "10s"}, member);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(Str(boost::json::parse(r.out), "id"), id);
  // spot-prices --watch prints again every --interval until stopped.
  const int watched = RunCommand({"/bin/sh", "-c",
                                  "SPILLWAY_API=" + api_ + " SPILLWAY_API_KEY=" + member_ + " timeout 3.5 " +
                                      std::string(SPILLWAY_CLI_BIN) + " spot-prices --watch --interval 1s --output csv >" +
                                      home_ + "/watch.csv"},
                                 {}, nullptr);
  EXPECT_EQ(watched, 124);  // stopped by timeout, not ended by itself
  const std::string watch = ReadWhole(home_ + "/watch.csv");
  size_t headers = 0;
  for (size_t at = watch.find("region,gpu_model"); at != std::string::npos; at = watch.find("region,gpu_model", at + 1))
    ++headers;
  EXPECT_GE(headers, 3u) << watch;
  ASSERT_EQ(Run({"instances", "terminate", id, "--wait"}, member).rc, 0);
  r = Run({"instances", "ssh", id}, with_ssh);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("no SSH endpoint"), std::string::npos) << r.err;
  EXPECT_EQ(Run({"ssh-keys", "delete", key_id}, member).rc, 0);
  EXPECT_EQ(ParseCsv(Run({"ssh-keys", "list", "--output", "csv"}, member).out).size(), 1u);

  r = Run({"volumes", "create", "--name", "data", "--region", "us-east", "--size-gb", "5"}, member);
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string volume = Str(boost::json::parse(r.out), "id");
  rows = ParseCsv(Run({"volumes", "list", "--output", "csv"}, member).out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1][0], volume);
  EXPECT_EQ(Run({"volumes", "delete", volume}, member).rc, 0);

  // An operator takes GPUs back for internal demand.
  const std::map<std::string, std::string> ops = {{"SPILLWAY_API", api_}, {"SPILLWAY_API_KEY", fleet_->operator_key}};
  r = Run({"reservations", "set", "us-east", "H100-80GB", "--gpus", "2"}, ops);
  ASSERT_EQ(r.rc, 0) << r.err;
  rows = ParseCsv(Run({"reservations", "list", "--output", "csv"}, ops).out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1][3], "2");
  EXPECT_EQ(fleet_->PoolInt("us-east", "H100-80GB", "internal_reserved_gpus"), 2);

  // An admin makes a key for the tenant, lists it, revokes it; the revoked key is refused.
  const std::map<std::string, std::string> admin = {{"SPILLWAY_API", api_}, {"SPILLWAY_API_KEY", fleet_->admin}};
  r = Run({"keys", "create", "--tenant", tenant_, "--role", "member", "--name", "ci"}, admin);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto made = boost::json::parse(r.out);
  rows = ParseCsv(Run({"keys", "list", "--tenant", tenant_, "--output", "csv"}, admin).out);
  bool listed = false;
  for (const auto& row : rows) listed = listed || row[0] == Str(made, "id");
  EXPECT_TRUE(listed);
  EXPECT_EQ(Run({"instances", "list"}, {{"SPILLWAY_API", api_}, {"SPILLWAY_API_KEY", Str(made, "secret")}}).rc, 0);
  ASSERT_EQ(Run({"keys", "revoke", Str(made, "id"), "--tenant", tenant_}, admin).rc, 0);
  r = Run({"instances", "list"}, {{"SPILLWAY_API", api_}, {"SPILLWAY_API_KEY", Str(made, "secret")}});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("HTTP 401"), std::string::npos) << r.err;
}

TEST(CliTls, TheCliAndTheAgentSpeakHttpsAndTrustOnlyAVerifiedCertificateForItsHost) {
  // An apiserver with TLS on (a certificate for "localhost" from a CA of the test's own), as a CLI on
  // another machine reaches it: https:// with --ca-file (or the profile's ca_file) works; without
  // the CA, or under a name the certificate does not have, the CLI refuses to talk (exit 1). An
  // agent given the CA registers and heartbeats over https.
  TestDb db;
  char tmpl[] = "/tmp/spillway-cli-tls-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  std::string out;
  ASSERT_TRUE(MakeLocalhostCertificate(dir, &out)) << out;
  const int tls_port = FreePort();
  auto server_env = TlsListenerEnv(dir, tls_port);
  server_env["SPILLWAY_AGENT_BOOTSTRAP_TOKEN"] = "test-bootstrap-token";
  ApiServer server(db.dsn(), server_env);
  ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
  const std::string admin = BootstrapAdmin(db.dsn());
  const std::string https = "https://localhost:" + std::to_string(tls_port);
  const std::map<std::string, std::string> as_admin{{"SPILLWAY_API_KEY", admin}};

  auto r = RunCli(dir, {"--api", https, "--ca-file", dir + "/cert.pem", "tenants", "list", "--output", "json"}, as_admin);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("\"operator\""), std::string::npos) << r.out;
  auto env = as_admin;
  env["SPILLWAY_CA_FILE"] = dir + "/cert.pem";
  EXPECT_EQ(RunCli(dir, {"--api", https, "tenants", "list"}, env).rc, 0);

  // The system's CAs do not know this certificate; 127.0.0.1 is not a name it carries.
  r = RunCli(dir, {"--api", https, "tenants", "list"}, as_admin);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("certificate verify failed"), std::string::npos) << r.err;
  r = RunCli(dir, {"--api", "https://127.0.0.1:" + std::to_string(tls_port), "--ca-file", dir + "/cert.pem", "tenants", "list"},
             as_admin);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("certificate verify failed"), std::string::npos) << r.err;
  EXPECT_EQ(RunCli(dir, {"--api", https, "--ca-file", dir + "/none.pem", "tenants", "list"}, as_admin).rc, 2);

  // configure keeps the CA in the profile.
  ASSERT_EQ(RunCli(dir, {"configure", "--api", https, "--ca-file", dir + "/cert.pem", "--key", admin}).rc, 0);
  EXPECT_NE(ReadWhole(dir + "/.config/spillway/config.toml").find("ca_file"), std::string::npos);
  r = RunCli(dir, {"tenants", "list", "--output", "csv"});
  EXPECT_EQ(r.rc, 0) << r.err;

  Process agent({AgentBinary(), "--api", https, "--ca-file", dir + "/cert.pem", "--bootstrap-token", "test-bootstrap-token",
                 "--region", "tls-east", "--gpu-model", "H100-80GB", "--gpus-per-host", "2", "--simulate-hosts", "1",
                 "--state-dir", dir + "/agent"},
                {});
  EXPECT_TRUE(WaitFor(
      [&] {
        const auto cap = RunCli(dir, {"capacity", "--output", "csv"});
        return cap.out.find("tls-east") != std::string::npos;
      },
      20s))
      << agent.Stderr();
  EXPECT_EQ(agent.Stop(SIGTERM), 0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace spillway::test
