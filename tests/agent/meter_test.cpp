// Attribution to the millisecond: an instance pays for the part of an interval it ran, idle time
// is sampled with no instance, and no millisecond of a GPU is claimed twice or left unobserved.
#include <gtest/gtest.h>

#include "agent/meter.hpp"

using namespace spillway;
using namespace spillway::agent;
using namespace std::chrono_literals;

namespace {
TimeMs At(std::int64_t ms) { return FromEpochMs(1'000'000 + ms); }
std::vector<GpuReading> Readings(std::int64_t energy_total = 0) {
  return {{0, 90, 1 << 30, 600'000, energy_total}, {1, 0, 600'000'000, 90'000, energy_total}};
}
std::int64_t Sum(const std::vector<protocol::Sample>& v, int gpu, const std::optional<std::string>& who) {
  std::int64_t n = 0;
  for (const auto& s : v)
    if (s.gpu_index == gpu && s.instance_id == who) n += s.interval_ms;
  return n;
}
}  // namespace

TEST(Meter, AnInstancePaysOnlyForThePartOfAnIntervalItRan) {
  Meter meter({0, 1}, 10s, At(0));
  auto s = meter.Tick(At(10'000), Readings());
  ASSERT_EQ(s.size(), 2u);  // idle GPUs are sampled too
  EXPECT_FALSE(s[0].instance_id);
  EXPECT_EQ(s[0].interval_ms, 10'000);

  meter.Observe(At(13'250), {{0, "ins_a"}});  // starts running on GPU 0
  s = meter.Tick(At(20'000), Readings());
  EXPECT_EQ(Sum(s, 0, std::nullopt), 3'250);
  EXPECT_EQ(Sum(s, 0, "ins_a"), 6'750);
  EXPECT_EQ(Sum(s, 1, std::nullopt), 10'000);
  for (const auto& x : s) {
    if (x.instance_id) {
      EXPECT_EQ(EpochMs(x.ts_ms), EpochMs(At(20'000)));
    } else if (x.gpu_index == 0) {
      EXPECT_EQ(EpochMs(x.ts_ms), EpochMs(At(13'250)));  // the idle part ends where the run begins
    }
  }

  meter.Observe(At(24'001), {});  // stops
  s = meter.Tick(At(30'000), Readings());
  EXPECT_EQ(Sum(s, 0, "ins_a"), 4'001);
  EXPECT_EQ(Sum(s, 0, std::nullopt), 5'999);
  EXPECT_FALSE(meter.Busy(0));
}

TEST(Meter, AStartAndStopInsideOneIntervalAreBothCut) {
  Meter meter({0}, 10s, At(0));
  meter.Observe(At(2'000), {{0, "ins_a"}});
  meter.Observe(At(2'000), {{0, "ins_a"}});  // seen again: no change
  meter.Observe(At(7'500), {{0, "ins_b"}});
  meter.Observe(At(9'000), {});
  const auto s = meter.Tick(At(10'000), {{0, 50, 0, 100'000, std::nullopt}});
  EXPECT_EQ(Sum(s, 0, "ins_a"), 5'500);
  EXPECT_EQ(Sum(s, 0, "ins_b"), 1'500);
  EXPECT_EQ(Sum(s, 0, std::nullopt), 3'000);
  // Consecutive stretches: each ends where the next begins.
  std::int64_t covered = 0;
  for (const auto& x : s) covered += x.interval_ms;
  EXPECT_EQ(covered, 10'000);
}

TEST(Meter, AStalledAgentClaimsAtMostThreeIntervals) {
  Meter meter({0}, 10s, At(0));
  meter.Observe(At(0), {{0, "ins_a"}});
  meter.Tick(At(10'000), {{0, 90, 0, 600'000, std::nullopt}});
  const auto s = meter.Tick(At(110'000), {{0, 90, 0, 600'000, std::nullopt}});  // 100 s later
  EXPECT_EQ(Sum(s, 0, "ins_a"), 30'000);
}

TEST(Meter, EnergyIsTheCountersDifferenceSharedByTime) {
  Meter meter({0}, 10s, At(0));
  meter.Tick(At(10'000), {{0, 90, 0, 600'000, 5'000'000}});  // the counter's first value
  meter.Observe(At(14'000), {{0, "ins_a"}});
  const auto s = meter.Tick(At(20'000), {{0, 90, 0, 600'000, 5'000'000 + 6'900'000}});  // 690 J/s
  std::int64_t total = 0, ran = 0;
  for (const auto& x : s) {
    total += x.energy_mj;
    if (x.instance_id) ran += x.energy_mj;
  }
  EXPECT_EQ(total, 6'900'000);
  EXPECT_EQ(ran, 6'900'000 * 6 / 10);
}
