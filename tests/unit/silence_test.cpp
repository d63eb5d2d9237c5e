// The silence rule, pure: hosts are judged only on heard time, and a region where many fall silent
// together brakes instead of failing instances.
#include <gtest/gtest.h>

#include "provisioning/fleet.hpp"

using namespace spillway;
using namespace std::chrono_literals;

namespace {
const TimeMs kT0 = FromEpochMs(1'800'000'000'000);

HostHealth Host(const std::string& id, const std::string& region, TimeMs last, bool up = true) {
  HostHealth h;
  h.id = id;
  h.region = region;
  h.last_heartbeat = last;
  h.up = up;
  return h;
}
SilenceRules Rules() { return SilenceRules{30s, 50, 3}; }
}  // namespace

TEST(Silence, AHostAloneSilentPastTheTimeoutFails) {
  std::vector<HostHealth> hosts = {Host("a", "r", kT0), Host("b", "r", kT0 + 25s), Host("c", "r", kT0 + 25s),
                                   Host("d", "r", kT0 + 25s)};
  const auto v = JudgeSilence(hosts, kT0 + 31s, kT0 - 1h, Rules());
  EXPECT_EQ(v.fail, (std::vector<std::string>{"a"}));
  EXPECT_TRUE(v.brake.empty());
  EXPECT_TRUE(JudgeSilence(hosts, kT0 + 30s, kT0 - 1h, Rules()).fail.empty());  // exactly the timeout: not yet
}

TEST(Silence, TimeBeforeTheControlPlaneCouldHearIsNotCounted) {
  // Every host last heard an hour ago, but the leader has listened for only 20 s (an outage just
  // ended): nobody is judged until it has listened for the whole timeout.
  std::vector<HostHealth> hosts = {Host("a", "r", kT0 - 1h)};
  EXPECT_TRUE(JudgeSilence(hosts, kT0 + 20s, kT0, Rules()).fail.empty());
  EXPECT_EQ(JudgeSilence(hosts, kT0 + 31s, kT0, Rules()).fail, (std::vector<std::string>{"a"}));
}

TEST(Silence, ManyOfARegionSilentTogetherBrake) {
  // 3 of 5 quiet (past half the timeout), 2 of them past the timeout: more than 50% -> brake.
  std::vector<HostHealth> hosts = {Host("a", "r", kT0), Host("b", "r", kT0 + 2s), Host("c", "r", kT0 + 10s),
                                   Host("d", "r", kT0 + 39s), Host("e", "r", kT0 + 39s), Host("x", "other", kT0)};
  const auto v = JudgeSilence(hosts, kT0 + 40s, kT0 - 1h, Rules());
  EXPECT_EQ(v.brake, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(v.braking_regions, (std::vector<std::string>{"r"}));
  EXPECT_EQ(v.fail, (std::vector<std::string>{"x"}));  // a region of one host never brakes
}

TEST(Silence, HostsJustMarkedDownKeepTheRegionBraking) {
  // a and b went down by the brake 5 s ago; c crosses the timeout now: still the same event.
  auto a = Host("a", "r", kT0 - 30s, false), b = Host("b", "r", kT0 - 30s, false);
  a.down_since = b.down_since = kT0 + 5s;
  std::vector<HostHealth> hosts = {a, b, Host("c", "r", kT0 - 21s), Host("d", "r", kT0 + 9s), Host("e", "r", kT0 + 9s)};
  auto v = JudgeSilence(hosts, kT0 + 10s, kT0 - 1h, Rules());
  EXPECT_EQ(v.brake, (std::vector<std::string>{"c"}));
  EXPECT_TRUE(v.fail.empty());
  // Long after, a lone failure is a lone failure again.
  hosts[2] = Host("c", "r", kT0 + 1h);
  hosts[3] = Host("d", "r", kT0 + 2h);
  hosts[4] = Host("e", "r", kT0 + 2h);
  v = JudgeSilence(hosts, kT0 + 2h, kT0 - 1h, Rules());
  EXPECT_EQ(v.fail, (std::vector<std::string>{"c"}));
}

TEST(Silence, DisabledHostsAreNotJudged) {
  auto h = Host("a", "r", kT0);
  h.disabled = true;
  EXPECT_TRUE(JudgeSilence({h}, kT0 + 1h, kT0 - 1h, Rules()).fail.empty());
}
