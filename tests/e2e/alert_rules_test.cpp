// The alert rules (config/prometheus/alerts.yml) and the Grafana dashboard (config/grafana/spillway.json)
// read only metrics the apiserver really exports: a rule or a panel on a name the server never writes
// would never fire or draw. promtool's own checks of the rules run as ctest tests (tests/CMakeLists.txt);
// the dashboard's queries are checked by promtool here, as recording rules.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <fstream>
#include <cstring>
#include <regex>
#include <set>

#include "fleet_support.hpp"

namespace spillway::test {
namespace {

// A fleet runs (one simulated host, so the pool gauges and its spot price have series) and the test
// waits for every name the rules read to appear, then fails naming those that never did.
class AlertRules : public FleetTest {};

std::set<std::string> MetricsIn(const std::string& text) {
  std::set<std::string> names;
  const std::regex name(R"(\b(spillway_[a-z0-9_]+|http_[a-z0-9_]+_(total|seconds))\b)");
  for (std::sregex_iterator it(text.begin(), text.end(), name), end; it != end; ++it) {
    std::string n = (*it)[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"})  // a histogram's series are its family's
      if (n.size() > std::strlen(suffix) && n.compare(n.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        n.resize(n.size() - std::strlen(suffix));
    names.insert(n);
  }
  return names;
}

TEST_F(AlertRules, EveryMetricTheRulesAndTheDashboardReadIsOneTheServerExports) {
  StartFleet(8);
  auto agent = fleet_->StartAgent("us-east", "H100-80GB", 1, 8);
  const std::string rules = ReadWhole(std::string(SPILLWAY_SOURCE_DIR) + "/config/prometheus/alerts.yml");
  ASSERT_FALSE(rules.empty());
  std::set<std::string> read = MetricsIn(rules);
  EXPECT_GE(read.size(), 14u);
  // Every panel's query, as a recording rule promtool checks; and its metrics join those checked.
  const auto dashboard =
      boost::json::parse(ReadWhole(std::string(SPILLWAY_SOURCE_DIR) + "/config/grafana/spillway.json"));
  std::string recording = "groups:\n  - name: spillway-dashboard\n    rules:\n";
  int queries = 0;
  for (const auto& panel : dashboard.at("panels").as_array()) {
    if (!panel.as_object().contains("targets")) continue;
    for (const auto& t : panel.at("targets").as_array()) {
      const std::string expr(t.at("expr").as_string());
      recording += "      - record: dashboard:query_" + std::to_string(++queries) + "\n        expr: " +
                   boost::json::serialize(boost::json::string(expr)) + "\n";  // a JSON string is a YAML string
      for (const auto& m : MetricsIn(expr)) read.insert(m);
    }
  }
  EXPECT_GE(queries, 40);
  const std::string rules_file = fleet_->state_dir + "/dashboard-rules.yml";
  std::ofstream(rules_file) << recording;
  std::string promtool_out;
  EXPECT_EQ(RunCommand({"/bin/sh", "-c", "promtool check rules " + rules_file + " 2>&1 >&2"}, {}, &promtool_out), 0)
      << promtool_out;

  // Counters that get a series on their first event: a launch refused, a spot instance preempted.
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, std::chrono::seconds(20)));
  EXPECT_EQ(fleet_->Call("POST", "/v1/instances", member_, R"({"instance_type":"h100.1x","region":"nowhere","market":"spot"})").status, 422);
  const auto spot = fleet_->Call("POST", "/v1/instances", member_, R"({"instance_type":"h100.1x","region":"us-east","market":"spot"})");
  ASSERT_EQ(spot.status, 201) << spot.body;
  EXPECT_EQ(fleet_->Call("PUT", "/v1/capacity/pools/us-east/H100-80GB", fleet_->operator_key, R"({"internal_reserved_gpus":8})").status, 200);
  EXPECT_EQ(fleet_->Call("POST", "/v1/instances", member_, R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand"})").status, 409);
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
