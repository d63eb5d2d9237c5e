// CutSample: a sample's interval cut into stored pieces, attributed only inside its instance's hold
// (docs/protocol.md, "What is billed, exactly").
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/duration.hpp"
#include "metering/attribution.hpp"

using namespace spillway;
using namespace spillway::metering;
using namespace std::chrono_literals;

namespace {
TimeMs T(const char* s) { return *ParseTime(s); }
std::int64_t Attributed(const std::vector<SamplePiece>& pieces) {
  std::int64_t ms = 0;
  for (const auto& p : pieces)
    if (p.attributed) ms += p.interval_ms;
  return ms;
}
std::int64_t Total(const std::vector<SamplePiece>& pieces, bool energy = false) {
  std::int64_t sum = 0;
  for (const auto& p : pieces) sum += energy ? p.energy_mj : p.interval_ms;
  return sum;
}
const TimeMs kNow = T("2026-11-26T12:00:00Z");
}  // namespace

TEST(CutSample, AnInstanceIsAttributedOnlyTheTimeItHeldTheGpu) {
  // The case: ins held GPU 0 for 4,037 ms, from 11:00:00.000 to 11:00:04.037.
  const std::vector<Hold> held = {{T("2026-11-26T11:00:00Z"), T("2026-11-26T11:00:04.037Z")}};
  // A 1 s sample ending 1 ms after the release: 999 ms its, 1 ms the GPU's alone.
  auto p = CutSample(T("2026-11-26T11:00:04.038Z"), 1000, 1000, &held, kNow);
  EXPECT_EQ(Attributed(p), 999);
  EXPECT_EQ(Total(p), 1000);
  EXPECT_EQ(Total(p, true), 1000);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].ts, T("2026-11-26T11:00:04.037Z"));
  EXPECT_TRUE(p[0].attributed);
  EXPECT_FALSE(p[1].attributed);
  // Wholly after the release (within the tolerance: accepted, never attributed).
  EXPECT_EQ(Attributed(CutSample(T("2026-11-26T11:00:04.050Z"), 1, 5, &held, kNow)), 0);
  EXPECT_EQ(Attributed(CutSample(T("2026-11-26T11:00:08Z"), 2000, 5, &held, kNow)), 0);
  // Beginning before the allocation: only from its start.
  p = CutSample(T("2026-11-26T11:00:00.300Z"), 1000, 1000, &held, kNow);
  EXPECT_EQ(Attributed(p), 300);
  EXPECT_EQ(Total(p), 1000);
  // Inside: all of it, in one piece.
  p = CutSample(T("2026-11-26T11:00:03Z"), 2000, 7, &held, kNow);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_TRUE(p[0].attributed);
  EXPECT_EQ(p[0].interval_ms, 2000);
  EXPECT_EQ(p[0].energy_mj, 7);
  // However samples arrive, the instance gets at most the 4,037 ms it held.
  std::int64_t sum = 0;
  for (TimeMs ts = T("2026-11-26T10:59:50Z"); ts <= T("2026-11-26T11:00:20Z"); ts += 1000ms)
    sum += Attributed(CutSample(ts, 1000, 1, &held, kNow));
  EXPECT_EQ(sum, 4037);
}

TEST(CutSample, AHoldStillOpenEndsAtTheDatabasesNowAndTwoHoldsAreBothCounted) {
  const std::vector<Hold> open = {{T("2026-11-26T11:59:50Z"), std::nullopt}};
  // A sample from a host 3 s ahead: the 3 s the control plane has not lived through are not held yet.
  auto p = CutSample(T("2026-11-26T12:00:03Z"), 10'000, 100, &open, kNow);
  EXPECT_EQ(Attributed(p), 7000);
  EXPECT_EQ(Total(p), 10'000);
  const std::vector<Hold> two = {{T("2026-11-26T11:10:00Z"), T("2026-11-26T11:10:02Z")},
                                 {T("2026-11-26T11:10:05Z"), T("2026-11-26T11:10:06Z")}};
  p = CutSample(T("2026-11-26T11:10:10Z"), 10'000, 10'000, &two, kNow);
  EXPECT_EQ(Attributed(p), 3000);
  EXPECT_EQ(Total(p, true), 10'000);
  EXPECT_EQ(Attributed(CutSample(T("2026-11-26T11:10:10Z"), 10'000, 1, nullptr, kNow)), 0);  // no instance
}

TEST(CutSample, ASampleAcrossTheTurnOfAnHourIsCutThereAndEachPieceIsInItsHour) {
  const std::vector<Hold> held = {{T("2026-11-26T10:00:00Z"), std::nullopt}};
  auto p = CutSample(T("2026-11-26T11:00:04Z"), 10'000, 1001, &held, kNow);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].ts, T("2026-11-26T11:00:00Z"));
  EXPECT_EQ(p[0].interval_ms, 6000);
  EXPECT_EQ(HourOfEnd(p[0].ts), EpochMs(T("2026-11-26T10:00:00Z")));  // ending on the hour: the hour before
  EXPECT_EQ(p[1].interval_ms, 4000);
  EXPECT_EQ(HourOfEnd(p[1].ts), EpochMs(T("2026-11-26T11:00:00Z")));
  EXPECT_EQ(p[0].energy_mj + p[1].energy_mj, 1001);
  // Month's end: a sample ending at midnight is November's.
  EXPECT_EQ(HourOfEnd(T("2026-12-01T00:00:00Z")), EpochMs(T("2026-11-30T23:00:00Z")));
  EXPECT_EQ(CutSample(T("2026-12-01T00:00:00Z"), 10'000, 1, nullptr, kNow).size(), 1u);
}

TEST(CutSample, PiecesAlwaysAddUpAndStayInsideTheHoldsProperty) {
  std::mt19937_64 rng(7);
  const TimeMs base = T("2026-11-26T10:59:00Z");
  for (int round = 0; round < 20'000; ++round) {
    std::uniform_int_distribution<std::int64_t> at(0, 180'000), len(1, 30'000), energy(0, 1LL << 40);
    std::vector<Hold> holds;
    for (int h = 0, n = static_cast<int>(rng() % 3); h < n; ++h) {
      const TimeMs from = base + Millis(at(rng));
      holds.push_back({from, rng() % 4 ? std::optional<TimeMs>(from + Millis(len(rng))) : std::nullopt});
    }
    const TimeMs ts = base + Millis(at(rng));
    const std::int64_t interval = len(rng), e = energy(rng);
    const TimeMs known = base + Millis(at(rng));
    const auto pieces = CutSample(ts, interval, e, &holds, known);
    ASSERT_EQ(Total(pieces), interval);
    ASSERT_EQ(Total(pieces, true), e);
    TimeMs cursor = ts - Millis(interval);
    for (const auto& p : pieces) {
      ASSERT_GT(p.interval_ms, 0);
      ASSERT_EQ(p.ts - Millis(p.interval_ms), cursor);  // in order, no gap, no overlap
      ASSERT_EQ(HourOfEnd(p.ts), HourOfEnd(cursor + 1ms));  // within one hour
      cursor = p.ts;
      if (!p.attributed) continue;
      // Wholly inside the holds (open ones up to `known`): within one stretch of their union.
      std::vector<std::pair<TimeMs, TimeMs>> spans;
      for (const Hold& h : holds)
        if (h.to.value_or(known) > h.from) spans.emplace_back(h.from, h.to.value_or(known));
      std::sort(spans.begin(), spans.end());
      bool inside = false;
      for (std::size_t k = 0; k < spans.size() && !inside; ++k) {
        TimeMs end = spans[k].second;
        for (std::size_t j = k + 1; j < spans.size() && spans[j].first <= end; ++j) end = std::max(end, spans[j].second);
        inside = spans[k].first <= p.ts - Millis(p.interval_ms) && p.ts <= end;
      }
      ASSERT_TRUE(inside);
    }
    ASSERT_EQ(cursor, ts);
  }
}
