// The alert rules (config/prometheus/alerts.yml) read only metrics the apiserver really exports: a
// rule on a name the server never writes would never fire. promtool's own checks run as ctest tests
// (tests/CMakeLists.txt); this one scrapes a real apiserver's /metrics.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "fleet_support.hpp"

namespace spillway::test {
namespace {

// A fleet runs (one simulated host, so the pool gauges and its spot price have series) and the test
// waits for every name the rules read to appear, then fails naming those that never did.
class AlertRules : public FleetTest {};

TEST_F(AlertRules, EveryMetricTheRulesReadIsOneTheServerExports) {
  StartFleet(8);
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  const std::string rules = ReadWhole(std::string(SPILLWAY_SOURCE_DIR) + "/config/prometheus/alerts.yml");
  ASSERT_FALSE(rules.empty());
  std::set<std::string> read;
  const std::regex name(R"(\b(spillway_[a-z0-9_]+|http_[a-z0-9_]+_total)\b)");
  for (std::sregex_iterator it(rules.begin(), rules.end(), name), end; it != end; ++it) read.insert((*it)[1]);
  EXPECT_GE(read.size(), 14u);

  std::set<std::string> exported;
  const std::regex type_line(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) )");
  auto all_there = [&] {
    fleet_->Call("GET", "/v1/instances", member_);  // the request counters get a series
    const std::string metrics = Http(server_->admin_port(), "GET", "/metrics").body;
    exported.clear();
    for (std::sregex_iterator it(metrics.begin(), metrics.end(), type_line), end; it != end; ++it)
      exported.insert((*it)[1]);
    for (const auto& m : read)
      if (!exported.count(m)) return false;
    return true;
  };
  WaitFor(all_there, std::chrono::seconds(30));
  for (const auto& m : read) EXPECT_TRUE(exported.count(m)) << m << " is read by an alert rule but not exported";
}

}  // namespace
}  // namespace spillway::test
