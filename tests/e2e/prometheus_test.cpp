// A real Prometheus (Debian's) scrapes a real apiserver and evaluates the real alert rules
// (config/prometheus/alerts.yml, their `for:` shortened to 0s so the test need not wait minutes):
// killing a simulated agent fires SpillwayHostsDown, and starting it again clears it.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <boost/json.hpp>

#include <filesystem>
#include <fstream>
#include <regex>

#include "fleet_support.hpp"

namespace spillway::test {
namespace {

using namespace std::chrono_literals;

class RealPrometheus : public FleetTest {
 protected:
  // "firing", "pending", or "" when Prometheus has no such alert active.
  std::string AlertState(int port, const std::string& name) {
    const auto r = Http(port, "GET", "/api/v1/alerts");
    if (r.status != 200) return "";
    try {
      const auto v = boost::json::parse(r.body);  // alive while its parts are read
      for (const auto& a : v.at("data").at("alerts").as_array())
        if (Str(a.at("labels"), "alertname") == name) return Str(a, "state");
    } catch (const std::exception&) {
    }
    return "";
  }
};

TEST_F(RealPrometheus, KillingAnAgentFiresHostsDownAndStartingItAgainClearsIt) {
  const std::string binary = "/usr/bin/prometheus";
  ASSERT_TRUE(std::filesystem::exists(binary)) << "install Debian's prometheus (scripts/lib.sh does)";
  StartFleet(8);
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));

  const std::string dir = fleet_->state_dir + "/prometheus";
  std::filesystem::create_directories(dir);
  const std::string rules = ReadWhole(std::string(SPILLWAY_SOURCE_DIR) + "/config/prometheus/alerts.yml");
  ASSERT_NE(rules.find("alert: SpillwayHostsDown"), std::string::npos);
  std::ofstream(dir + "/alerts.yml") << std::regex_replace(rules, std::regex("for: [0-9]+[smh]"), "for: 0s");
  std::ofstream(dir + "/prometheus.yml")
      << "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
         "rule_files: [alerts.yml]\n"
         "scrape_configs:\n"
         "  - job_name: spillway\n"
         "    static_configs: [{targets: ['127.0.0.1:" << server_->admin_port() << "']}]\n";
  const int port = FreePort();
  Process prometheus({binary, "--config.file=" + dir + "/prometheus.yml", "--storage.tsdb.path=" + dir + "/data",
                      "--web.listen-address=127.0.0.1:" + std::to_string(port)},
                     {});
  // Scraped: the hosts gauge is there, one host up.
  ASSERT_TRUE(WaitFor(
      [&] {
        const auto r = Http(port, "GET", "/api/v1/query?query=sum(spillway_hosts%7Bhealth%3D%22up%22%7D)");
        return r.status == 200 && r.body.find("\"1\"]") != std::string::npos;
      },
      30s))
      << prometheus.Stderr();
  EXPECT_EQ(AlertState(port, "SpillwayHostsDown"), "");

  ASSERT_EQ(agent->Stop(SIGKILL), 128 + SIGKILL);
  EXPECT_TRUE(WaitFor([&] { return AlertState(port, "SpillwayHostsDown") == "firing"; }, 30s))
      << Http(port, "GET", "/api/v1/alerts").body;

  agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);  // the same host comes back
  EXPECT_TRUE(WaitFor([&] { return AlertState(port, "SpillwayHostsDown").empty(); }, 30s))
      << Http(port, "GET", "/api/v1/alerts").body;
}

}  // namespace
}  // namespace spillway::test
