// The agent's spool on a real filesystem (a temporary directory): recorded samples survive a
// restart at any byte, are shipped in batches that keep their number until acknowledged, and a
// refused batch is set aside without blocking the rest.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "agent/spool.hpp"

using namespace spillway;
using namespace spillway::agent;
namespace fs = std::filesystem;

namespace {

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/spw-spool-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::unique_ptr<Spool> Open(std::int64_t max_bytes = 1LL << 30, std::int64_t segment_bytes = 4LL << 20) {
    std::string why;
    auto s = Spool::Open({dir_, max_bytes, segment_bytes}, &why);
    EXPECT_TRUE(s) << why;
    return s;
  }
  // One tick of `gpus` GPUs at time t (ms).
  static std::vector<protocol::Sample> Tick(std::int64_t t, int gpus = 2) {
    std::vector<protocol::Sample> out;
    for (int g = 0; g < gpus; ++g)
      out.push_back({FromEpochMs(t), g, g == 0 ? std::optional<std::string>("ins_a") : std::nullopt, 1000, 50,
                     1 << 20, 100000, 100000});
    return out;
  }
  std::vector<fs::path> Segments() const {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().extension() == ".log") out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string dir_;
};

TEST_F(SpoolTest, BatchesKeepTheirNumberUntilAcknowledged) {
  auto spool = Open();
  EXPECT_FALSE(spool->NextBatch(100));
  for (int t = 1; t <= 3; ++t) ASSERT_TRUE(spool->Append(FromEpochMs(t * 1000), Tick(t * 1000)));
  auto b = spool->NextBatch(100);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->batch_seq, 0);
  EXPECT_EQ(b->samples.size(), 6u);
  EXPECT_EQ(EpochMs(b->sampled_through_ms), 3000);
  ASSERT_TRUE(spool->Append(FromEpochMs(4000), Tick(4000)));
  // No answer yet: the same batch again, not one with the new tick in it.
  auto again = spool->NextBatch(100);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->batch_seq, 0);
  EXPECT_EQ(again->samples.size(), 6u);
  spool->Acknowledge();
  b = spool->NextBatch(100);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->batch_seq, 1);
  EXPECT_EQ(b->samples.size(), 2u);
  EXPECT_EQ(EpochMs(b->samples[0].ts_ms), 4000);
  spool->Acknowledge();
  EXPECT_FALSE(spool->NextBatch(100));
  EXPECT_EQ(spool->Stats().unsent_samples, 0);
}

TEST_F(SpoolTest, ABatchIsCutFromWholeTicksUpToTheLimit) {
  auto spool = Open();
  for (int t = 1; t <= 10; ++t) ASSERT_TRUE(spool->Append(FromEpochMs(t * 1000), Tick(t * 1000, 3)));
  std::int64_t seen = 0, seq = 0;
  while (auto b = spool->NextBatch(7)) {
    EXPECT_EQ(b->batch_seq, seq++);
    EXPECT_LE(b->samples.size(), 9u);  // whole ticks: one past the limit at most
    EXPECT_EQ(b->samples.size() % 3, 0u);
    seen += static_cast<std::int64_t>(b->samples.size());
    spool->Acknowledge();
  }
  EXPECT_EQ(seen, 30);
}

TEST_F(SpoolTest, ARestartSendsThePendingBatchAgainWithItsNumber) {
  {
    auto spool = Open();
    for (int t = 1; t <= 3; ++t) ASSERT_TRUE(spool->Append(FromEpochMs(t * 1000), Tick(t * 1000)));
    auto b = spool->NextBatch(4);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->samples.size(), 4u);
  }  // killed before the answer
  {
    auto spool = Open();
    EXPECT_EQ(spool->Stats().unsent_samples, 6);
    auto b = spool->NextBatch(100);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->batch_seq, 0);
    EXPECT_EQ(b->samples.size(), 4u);  // exactly the batch that was in flight
    spool->Acknowledge();
  }
  auto spool = Open();
  auto b = spool->NextBatch(100);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->batch_seq, 1);
  EXPECT_EQ(b->samples.size(), 2u);
  EXPECT_EQ(EpochMs(b->samples[0].ts_ms), 3000);
}

TEST_F(SpoolTest, ATornLastRecordIsDroppedAtAnyByte) {
  std::uintmax_t whole = 0, two = 0;
  {
    auto spool = Open();
    ASSERT_TRUE(spool->Append(FromEpochMs(1000), Tick(1000)));
    ASSERT_TRUE(spool->Append(FromEpochMs(2000), Tick(2000)));
    two = fs::file_size(Segments().at(0));
    ASSERT_TRUE(spool->Append(FromEpochMs(3000), Tick(3000)));
    whole = fs::file_size(Segments().at(0));
  }
  std::string bytes;
  {
    std::ifstream in(Segments().at(0), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // The agent killed at every byte of the third record's write, and at one flipped byte.
  for (std::uintmax_t cut = two + 1; cut <= whole; ++cut) {
    {
      std::ofstream out(Segments().at(0), std::ios::binary | std::ios::trunc);
      std::string torn = bytes.substr(0, cut);
      if (cut == whole) torn[whole - 3] ^= 0x20;  // complete but corrupt: the checksum catches it
      out << torn;
    }
    auto spool = Open();
    EXPECT_EQ(spool->Stats().torn_records, 1) << "cut at " << cut;
    auto b = spool->NextBatch(100);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->samples.size(), 4u) << "cut at " << cut;
    EXPECT_EQ(EpochMs(b->sampled_through_ms), 2000);
    // Recording goes on after the dropped bytes, readable.
    ASSERT_TRUE(spool->Append(FromEpochMs(3500), Tick(3500)));
    spool->Acknowledge();
    auto next = spool->NextBatch(100);
    ASSERT_TRUE(next);
    EXPECT_EQ(EpochMs(next->sampled_through_ms), 3500);
    spool.reset();
    fs::remove(fs::path(dir_) / "cursor");
    fs::remove(fs::path(dir_) / "pending.json");
    for (const auto& s : Segments()) fs::remove(s);
    std::ofstream(fs::path(dir_) / "seg-000000000001.log", std::ios::binary) << bytes;  // for the next cut
  }
}

TEST_F(SpoolTest, ACorruptRecordInAnOlderSegmentCostsOnlyItself) {
  {
    auto spool = Open(1LL << 30, /*segment_bytes=*/700);
    for (int t = 1; t <= 6; ++t) ASSERT_TRUE(spool->Append(FromEpochMs(t * 1000), Tick(t * 1000)));
  }
  const auto segments = Segments();
  ASSERT_GE(segments.size(), 2u);
  {  // flip a byte in the last record of the first segment (disk damage, not a torn write)
    std::fstream f(segments[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(segments[0]) - 5));
    f.put('#');
  }
  auto spool = Open(1LL << 30, 700);
  std::vector<std::int64_t> ticks;
  while (auto b = spool->NextBatch(2)) {  // one tick per batch
    for (const auto& s : b->samples)
      if (s.gpu_index == 0) ticks.push_back(EpochMs(s.ts_ms) / 1000);
    spool->Acknowledge();
  }
  // Every tick but the damaged one, in order.
  ASSERT_EQ(ticks.size(), 5u);
  for (std::size_t i = 1; i < ticks.size(); ++i) EXPECT_LT(ticks[i - 1], ticks[i]);
  EXPECT_EQ(ticks.front(), 1);
  EXPECT_EQ(ticks.back(), 6);
}

TEST_F(SpoolTest, ARefusedBatchIsSetAsideAndTheNextGoesOn) {
  auto spool = Open();
  ASSERT_TRUE(spool->Append(FromEpochMs(1000), Tick(1000)));
  auto b = spool->NextBatch(100);
  ASSERT_TRUE(b);
  spool->Quarantine("422 invalid_sample: samples[0].instance_id: ...");
  EXPECT_TRUE(fs::exists(fs::path(dir_) / "quarantine" / "batch-0.json"));
  EXPECT_EQ(spool->Stats().quarantined_batches, 1);
  ASSERT_TRUE(spool->Append(FromEpochMs(2000), Tick(2000)));
  b = spool->NextBatch(100);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->batch_seq, 1);
  EXPECT_EQ(EpochMs(b->samples[0].ts_ms), 2000);
}

TEST_F(SpoolTest, OverItsSizeTheOldestUnsentSamplesAreDroppedAndCounted) {
  auto spool = Open(/*max_bytes=*/4000, /*segment_bytes=*/1000);
  for (int t = 1; t <= 100; ++t) ASSERT_TRUE(spool->Append(FromEpochMs(t * 1000), Tick(t * 1000)));
  const auto stats = spool->Stats();
  EXPECT_GT(stats.dropped_samples, 0);
  EXPECT_LE(stats.bytes, 4000 + 1000);
  std::int64_t shipped = 0;
  std::int64_t last = 0;
  while (auto b = spool->NextBatch(1000)) {
    shipped += static_cast<std::int64_t>(b->samples.size());
    last = EpochMs(b->sampled_through_ms);
    spool->Acknowledge();
  }
  EXPECT_EQ(shipped + stats.dropped_samples, 200);  // every sample either shipped or counted as dropped
  EXPECT_EQ(last, 100'000);                          // the newest are kept
}

TEST_F(SpoolTest, OnlyAnEmptySpoolTakesTheServersNumbering) {
  {
    auto spool = Open();
    spool->AdoptNextSeq(41);
    ASSERT_TRUE(spool->Append(FromEpochMs(1000), Tick(1000)));
    EXPECT_EQ(spool->NextBatch(100)->batch_seq, 41);
    spool->Acknowledge();
  }
  auto spool = Open();
  spool->AdoptNextSeq(7);  // a spool with history keeps its own
  EXPECT_EQ(spool->next_seq(), 42);
}

TEST(Crc32, MatchesTheStandardCheckValue) { EXPECT_EQ(Crc32("123456789", 9), 0xCBF43926u); }

}  // namespace
