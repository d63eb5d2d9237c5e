// CheckBatch: what ingest accepts, sample by sample (docs/protocol.md).
#include <gtest/gtest.h>

#include "metering/ingest.hpp"

using namespace spillway;
using namespace spillway::metering;
using namespace std::chrono_literals;

namespace {
const TimeMs kNow = *ParseTime("2026-11-26T12:00:00Z");
const std::set<std::pair<std::string, int>> kGpus = {{"hst_a", 0}, {"hst_a", 1}, {"hst_b", 0}};
// ins_1 held GPU 0 of hst_a from 11:00 to 11:30, and again from 11:45 on.
const std::vector<AllocationSpan> kAllocations = {
    {"ins_1", "hst_a", 0, *ParseTime("2026-11-26T11:00:00Z"), *ParseTime("2026-11-26T11:30:00Z")},
    {"ins_1", "hst_a", 0, *ParseTime("2026-11-26T11:45:00Z"), std::nullopt}};

protocol::Sample At(const char* ts, int gpu, std::optional<std::string> instance, std::int64_t interval_ms = 10'000) {
  return {*ParseTime(ts), gpu, std::move(instance), interval_ms, 50, 1 << 30, 100'000, 1'000'000};
}
std::optional<IngestResult> Check(std::vector<protocol::Sample> samples, const std::string& host = "hst_a") {
  protocol::SampleBatch b{1, kNow - 1min, std::nullopt, std::move(samples)};
  return CheckBatch(b, host, kGpus, kAllocations, kNow, IngestRules{});
}
std::size_t IndexOf(const std::optional<IngestResult>& r) {
  EXPECT_TRUE(r);
  return r && r->sample_index ? *r->sample_index : 999;
}
}  // namespace

TEST(CheckBatch, AcceptsSamplesWithinTheirAllocationAndIdleOnes) {
  EXPECT_FALSE(Check({At("2026-11-26T11:10:00Z", 0, "ins_1"), At("2026-11-26T11:10:00Z", 1, std::nullopt),
                      At("2026-11-26T11:59:00Z", 0, "ins_1")}));
  // The tolerance (5 s) widens the allocation at both ends.
  EXPECT_FALSE(Check({At("2026-11-26T11:00:06Z", 0, "ins_1")}));        // begins 10 s before ts: 4 s early
  EXPECT_FALSE(Check({At("2026-11-26T11:30:04Z", 0, "ins_1")}));        // ends 4 s after the release
  EXPECT_FALSE(Check({At("2026-11-26T12:00:04Z", 0, std::nullopt)}));   // 4 s ahead of the server
}

TEST(CheckBatch, RefusesTheFirstBadSampleByIndex) {
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T11:10:00Z", 0, "ins_1"), At("2026-11-26T11:10:00Z", 2, std::nullopt)})), 1u);
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T11:10:00Z", 0, std::nullopt, 30'001)})), 0u);  // > 3 intervals
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T12:00:06Z", 0, std::nullopt)})), 0u);          // from the future
  EXPECT_EQ(IndexOf(Check({At("2026-11-18T12:00:00Z", 0, std::nullopt)})), 0u);          // older than 7 days
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T11:00:04Z", 0, "ins_1")})), 0u);  // begins 6 s before its allocation
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T11:35:00Z", 0, "ins_1")})), 0u);  // between its two allocations
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T11:10:00Z", 1, "ins_1")})), 0u);  // not its GPU
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T11:10:00Z", 0, "ins_1")}, "hst_b")), 0u);  // not its host
  // Two samples of one GPU covering the same time: the later in the batch is at fault.
  EXPECT_EQ(IndexOf(Check({At("2026-11-26T11:10:00Z", 0, std::nullopt), At("2026-11-26T11:10:05Z", 1, std::nullopt),
                           At("2026-11-26T11:10:05Z", 0, std::nullopt)})),
            2u);
  // The envelope: sampled_through ahead of the server's clock (no sample at fault).
  protocol::SampleBatch b{1, kNow + 1min, std::nullopt, {}};
  const auto r = CheckBatch(b, "hst_a", kGpus, kAllocations, kNow, IngestRules{});
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->sample_index);
  EXPECT_NE(r->message.find("sampled_through_ms"), std::string::npos);
}

TEST(CheckBatch, SamplesOfAnInstanceThatNoLongerHeldTheGpuAreAllListedWhenNothingElseIsWrong) {
  // A host cut off from the control plane kept attributing GPU 0 to ins_1 after its release at 11:30.
  const auto r = Check({At("2026-11-26T11:29:00Z", 0, "ins_1"), At("2026-11-26T11:31:00Z", 0, "ins_1"),
                        At("2026-11-26T11:31:00Z", 1, std::nullopt), At("2026-11-26T11:32:00Z", 0, "ins_1")});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->kind, IngestResult::Kind::kRejected);
  EXPECT_EQ(IndexOf(r), 1u);
  EXPECT_EQ(r->unheld, (std::vector<std::size_t>{1, 3}));
  EXPECT_NE(r->message.find("did not hold GPU 0"), std::string::npos) << r->message;
  // The same with the unheld samples unattributed is accepted.
  EXPECT_FALSE(Check({At("2026-11-26T11:29:00Z", 0, "ins_1"), At("2026-11-26T11:31:00Z", 0, std::nullopt),
                      At("2026-11-26T11:31:00Z", 1, std::nullopt), At("2026-11-26T11:32:00Z", 0, std::nullopt)}));
  // Anything else wrong in the batch is reported instead, with no list: the batch is not repairable.
  const auto bad = Check({At("2026-11-26T11:31:00Z", 0, "ins_1"), At("2026-11-26T11:31:00Z", 2, std::nullopt)});
  EXPECT_EQ(IndexOf(bad), 1u);
  EXPECT_TRUE(bad->unheld.empty());
  const auto overlap = Check({At("2026-11-26T11:31:00Z", 0, "ins_1"), At("2026-11-26T11:31:05Z", 0, std::nullopt)});
  EXPECT_EQ(IndexOf(overlap), 1u);
  EXPECT_TRUE(overlap->unheld.empty());
}

TEST(CheckBatch, SamplesOverStoredTimeAreListedWithTheUnheldOnesWhenNothingElseIsWrong) {
  protocol::SampleBatch b{1, kNow - 1min, std::nullopt,
                          {At("2026-11-26T11:29:00Z", 0, "ins_1"), At("2026-11-26T11:31:00Z", 0, "ins_1"),
                           At("2026-11-26T11:31:00Z", 1, std::nullopt)}};
  // Sample 0 and 2 cover time already stored; sample 1 names ins_1 after its release.
  auto r = CheckBatch(b, "hst_a", kGpus, kAllocations, kNow, IngestRules{}, {0, 2});
  ASSERT_TRUE(r);
  EXPECT_EQ(IndexOf(r), 0u);
  EXPECT_EQ(r->overlapping, (std::vector<std::size_t>{0, 2}));
  EXPECT_EQ(r->unheld, (std::vector<std::size_t>{1}));
  EXPECT_NE(r->message.find("is already stored"), std::string::npos) << r->message;
  // A hard fault hides both lists: the batch cannot be repaired.
  b.samples.push_back(At("2026-11-26T11:31:00Z", 2, std::nullopt));
  r = CheckBatch(b, "hst_a", kGpus, kAllocations, kNow, IngestRules{}, {0, 2});
  EXPECT_EQ(IndexOf(r), 3u);
  EXPECT_TRUE(r->overlapping.empty());
  EXPECT_TRUE(r->unheld.empty());
}
