// Metering's store and steps on a real PostgreSQL, without HTTP: the ingestor's group commit and
// ledger, the hourly fold (folding again changes nothing; a late sample refolds its hour), and
// ledger pruning.
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "core/db.hpp"
#include "metering/ingest.hpp"
#include "metering/samples_store.hpp"
#include "metering/usage.hpp"
#include "provisioning/hosts.hpp"
#include "provisioning/volumes.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::metering;
using spillway::test::TestDb;
using namespace std::chrono_literals;

namespace {
// One value of a query (NULL as 0); `args` are its $1, $2, … parameters.
template <class... Args>
std::int64_t Scalar(pqxx::connection& c, const std::string& sql, const Args&... args) {
  pqxx::nontransaction tx(c);
  const auto f = tx.exec_params(sql, args...).at(0).at(0);
  return f.is_null() ? 0 : f.template as<std::int64_t>();
}
protocol::SampleBatch Batch(std::int64_t seq, TimeMs end, int n) {
  protocol::SampleBatch b;
  b.batch_seq = seq;
  for (int i = 0; i < n; ++i)
    b.samples.push_back({end - Millis((n - 1 - i) * 1000), 0, std::nullopt, 1000, 40, 1 << 30, 100'000, 100'000});
  b.sampled_through_ms = end;
  return b;
}
}  // namespace

TEST(MeteringStore, IngestFoldAndPruneOnARealDatabase) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  const TimeMs now = NowMs();
  const std::string host = InTransaction(*conn, [&](Tx& tx) {
    return RegisterHost(tx, {"gpu-1", "r1", "r1-a", {{0, 80LL << 30, "GPU-x-0", "H100-80GB"}}}, now).host_id;
  });
  prometheus::Registry registry;
  SystemClock clock;
  Ingestor ingest({db.dsn(), "spillway-ingest", 3000ms, 30000ms}, IngestSettings{}, clock, registry);
  ingest.Start();
  // Half past an hour that is over, so that no batch below spans two hours.
  const TimeMs end = FromEpochMs((EpochMs(now) / 3'600'000 - 2) * 3'600'000 + 1'800'000);
  EXPECT_EQ(ingest.SubmitAndWait(host, Batch(0, end, 10)).kind, IngestResult::Kind::kAccepted);
  EXPECT_EQ(ingest.SubmitAndWait(host, Batch(0, end, 10)).kind, IngestResult::Kind::kDuplicate);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM usage_samples"), 10);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM usage_dirty_hours"), 1);

  FoldDirtyHours(*conn, 48);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM usage_dirty_hours"), 0);
  const auto idle = [&] { return Scalar(*conn, "SELECT sum(idle_gpu_ms) FROM pool_usage_hourly"); };
  EXPECT_EQ(idle(), 10'000);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM host_watermarks WHERE folded_through IS NOT NULL"), 1);
  FoldDirtyHours(*conn, 48);  // nothing changed: nothing to do
  EXPECT_EQ(idle(), 10'000);
  // A late batch for the same hour marks it again; the fold recomputes it whole.
  EXPECT_EQ(ingest.SubmitAndWait(host, Batch(1, end - 20s, 5)).kind, IngestResult::Kind::kAccepted);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM usage_dirty_hours"), 1);
  FoldDirtyHours(*conn, 48);
  EXPECT_EQ(idle(), 15'000);
  {
    pqxx::nontransaction tx(*conn);
    tx.exec("INSERT INTO usage_dirty_hours SELECT hour, now() FROM pool_usage_hourly");  // marked for no reason
  }
  FoldDirtyHours(*conn, 48);
  EXPECT_EQ(idle(), 15'000);  // folding again gives the same rows

  {  // Registration tells an agent that lost its spool where to go on.
    pqxx::work tx(*conn);
    EXPECT_EQ(NextBatchSeq(tx, host), 2);
  }
  // Ledger rows older than the sample age limit go; recent ones stay.
  EXPECT_EQ(ingest.PruneLedger(*conn, now), 0);
  EXPECT_EQ(ingest.PruneLedger(*conn, now + 8 * 24h), 2);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM ingest_batches"), 0);
  ingest.Stop();
}

TEST(MeteringStore, ADayOfSamplesGoesOnlyWhenRetainedFoldedAndInvoiced) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  const TimeMs now = *ParseTime("2026-11-26T12:00:00Z");
  const Millis retention = 30 * 24h;
  {
    pqxx::nontransaction tx(*conn);
    for (const char* day : {"2026-09-30", "2026-10-20", "2026-11-20"})
      tx.exec_params("SELECT usage_samples_partition($1::timestamptz)", std::string(day) + "T06:00:00Z");
    tx.exec("INSERT INTO usage_samples VALUES ('2026-09-30T06:00:00Z', 'hst_x', 0, NULL, 1000, 1, 1, 1, 1)");
  }
  auto partitions = [&] {
    return Scalar(*conn, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_samples'::regclass AND "
                         "inhrelid::regclass::text IN ('usage_samples_20260930', 'usage_samples_20261020', "
                         "'usage_samples_20261120')");
  };
  ASSERT_EQ(partitions(), 3);
  // Past retention, but September is not invoiced yet: kept.
  EXPECT_TRUE(DropExpiredPartitions(*conn, now, retention).empty());
  {
    pqxx::nontransaction tx(*conn);
    tx.exec("INSERT INTO billing_periods_closed VALUES ('2026-09', now()), ('2026-10', now())");
    tx.exec("INSERT INTO usage_dirty_hours VALUES ('2026-10-20T05:00:00Z', now())");  // not folded yet
  }
  // September's day goes; October's waits for its fold; November's is within retention.
  EXPECT_EQ(DropExpiredPartitions(*conn, now, retention), std::vector<std::string>{"usage_samples_20260930"});
  EXPECT_EQ(partitions(), 2);
  FoldDirtyHours(*conn, 48);
  EXPECT_EQ(DropExpiredPartitions(*conn, now, retention), std::vector<std::string>{"usage_samples_20261020"});
  EXPECT_EQ(partitions(), 1);
}

TEST(VolumeMetering, GigabyteHoursPerVolumeAndClosedHour) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  {
    pqxx::nontransaction tx(*conn);
    tx.exec("INSERT INTO tenants (id, name, status, gpu_quota, is_operator, created_at, updated_at) "
            "VALUES ('ten_v', 'v', 'active', 0, false, now(), now())");
    tx.exec("INSERT INTO volumes (id, tenant_id, name, region, size_gb, created_at, deleted_at) VALUES "
            "('vol_a', 'ten_v', 'a', 'r1', 100, '2026-11-26T10:30:00Z', '2026-11-26T12:15:00Z'), "
            "('vol_b', 'ten_v', 'b', 'r1', 2, '2026-11-26T11:00:00Z', NULL)");
  }
  EXPECT_EQ(MeterVolumeHours(*conn, *ParseTime("2026-11-26T13:05:00Z")), 3);  // 10:00, 11:00, 12:00
  auto gb_ms = [&](const char* volume, const char* hour) {
    return Scalar(*conn, "SELECT gb_ms FROM volume_usage_hourly WHERE volume_id = $1 AND hour = $2::timestamptz",
                  std::string(volume), std::string(hour));
  };
  EXPECT_EQ(gb_ms("vol_a", "2026-11-26T10:00:00Z"), 100LL * 1'800'000);  // from 10:30
  EXPECT_EQ(gb_ms("vol_a", "2026-11-26T11:00:00Z"), 100LL * 3'600'000);
  EXPECT_EQ(gb_ms("vol_a", "2026-11-26T12:00:00Z"), 100LL * 900'000);    // until 12:15
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM volume_usage_hourly WHERE volume_id = 'vol_b' AND "
                          "hour = '2026-11-26T10:00:00Z'"),
            0);  // not yet there
  EXPECT_EQ(gb_ms("vol_b", "2026-11-26T12:00:00Z"), 2LL * 3'600'000);
  EXPECT_EQ(MeterVolumeHours(*conn, *ParseTime("2026-11-26T13:55:00Z")), 0);  // 13:00 is not closed
  EXPECT_EQ(MeterVolumeHours(*conn, *ParseTime("2026-11-26T14:00:00Z")), 1);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM volume_usage_hourly"), 6);  // a: 10-12; b: 11-13
}
