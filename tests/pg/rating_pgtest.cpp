// Rating at the sample's time (docs/architecture.md, "Billing"), on a hand-computed fixture: an
// on-demand instance across an on-demand price change and the turn of the month, with partial first
// and last samples; a spot instance through three spot price changes inside one hour. Samples go in
// through the real ingest, the real fold rates them, and the lines must be exactly these, to the cent.
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "billing/rating.hpp"
#include "core/db.hpp"
#include "core/money.hpp"
#include "metering/ingest.hpp"
#include "metering/fold.hpp"
#include "metering/usage.hpp"
#include "provisioning/hosts.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::billing;
using spillway::test::T;
using spillway::test::TestDb;
using namespace std::chrono_literals;

namespace {

// Samples of one GPU every 10 s, ending at each 10 s from `first` to `last`, all naming `instance`.
std::vector<protocol::Sample> Every10s(TimeMs first, TimeMs last, int gpu, const std::string& instance) {
  std::vector<protocol::Sample> out;
  for (TimeMs ts = first; ts <= last; ts += 10s) out.push_back({ts, gpu, instance, 10'000, 90, 1 << 30, 600'000, 6'000'000});
  return out;
}
}  // namespace

TEST(Rating, EachSampleIsPricedAtItsOwnTimeAndEachLineIsExactToTheCent) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  const std::string host = InTransaction(*conn, [&](Tx& tx) {
    return RegisterHost(tx,
                        {"gpu-r", "r1", "r1-a",
                         {{0, 80LL << 30, "GPU-r-0", "H100-80GB"}, {1, 80LL << 30, "GPU-r-1", "H100-80GB"}}},
                        T("2026-11-01T00:00:00Z"))
        .host_id;
  });
  {
    pqxx::work tx(*conn);
    tx.exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ('ten_r', 'rated', 8)");
    const auto instance = [&](const char* id, const char* market, const char* from, const char* to) {
      tx.exec_params("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, "
                     "host_id, started_at, ended_at, end_reason) VALUES ($1, 'ten_r', 'h100.1x', 'H100-80GB', 1, "
                     "'r1', $2, 'terminated', $3, $4::timestamptz, $5::timestamptz, 'terminated')",
                     std::string(id), std::string(market), host, std::string(from), std::string(to));
    };
    instance("ins_od", "on_demand", "2026-11-30T21:59:59.500Z", "2026-12-01T00:00:02.500Z");
    instance("ins_sp", "spot", "2026-11-30T22:00:00Z", "2026-11-30T23:00:00Z");
    tx.exec_params("INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at, released_at) VALUES "
                   "('ins_od', $1, 0, '2026-11-30T21:59:59.500Z', '2026-12-01T00:00:02.500Z'), "
                   "('ins_sp', $1, 1, '2026-11-30T22:00:00Z', '2026-11-30T23:00:00Z')",
                   host);
    // On-demand: $2.49 an H100-hour, $3.00 from 23:30.
    tx.exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES "
            "('H100-80GB', 'on_demand', 2490000, '2026-01-01T00:00:00Z'), "
            "('H100-80GB', 'on_demand', 3000000, '2026-11-30T23:30:00Z')");
    // Spot in r1: $1.00, then three changes inside the 22:00 hour.
    tx.exec("INSERT INTO spot_prices (region, gpu_model, effective_from, price_micros_per_gpu_hour, on_demand_micros, "
            "spare_fraction_ppm, target_micros) VALUES "
            "('r1', 'H100-80GB', '2026-01-01T00:00:00Z', 1000000, 2490000, 500000, 1000000), "
            "('r1', 'H100-80GB', '2026-11-30T22:10:00Z', 1100000, 2490000, 450000, 1100000), "
            "('r1', 'H100-80GB', '2026-11-30T22:20:00Z', 900000, 2490000, 550000, 900000), "
            "('r1', 'H100-80GB', '2026-11-30T22:45:30Z', 1300000, 2490000, 300000, 1300000)");
    tx.commit();
  }
  prometheus::Registry registry;
  FakeClock clock(T("2026-12-01T01:00:00Z"));
  metering::Ingestor ingest({db.dsn(), "spillway-ingest", 3000ms, 30000ms}, metering::IngestSettings{}, clock, registry);
  ingest.Start();
  // ins_od: a partial first sample ending 22:00:00 (5 s, of which it held the last 0.5), then every 10 s
  // to midnight, then a partial last one ending 00:00:05 (it held the first 2.5 s).
  std::int64_t seq = 0;
  const auto send = [&](std::vector<protocol::Sample> samples) {
    protocol::SampleBatch b;
    b.batch_seq = seq++;
    b.samples = std::move(samples);
    for (const auto& s : b.samples) b.sampled_through_ms = std::max(b.sampled_through_ms, s.ts_ms);
    const auto r = ingest.SubmitAndWait(host, b);
    EXPECT_EQ(r.kind, metering::IngestResult::Kind::kAccepted) << r.message;
  };
  auto first = Every10s(T("2026-11-30T22:00:10Z"), T("2026-11-30T23:00:00Z"), 0, "ins_od");
  first.insert(first.begin(), {T("2026-11-30T22:00:00Z"), 0, "ins_od", 5'000, 90, 1 << 30, 600'000, 3'000'000});
  send(first);
  auto last = Every10s(T("2026-11-30T23:00:10Z"), T("2026-12-01T00:00:00Z"), 0, "ins_od");
  last.push_back({T("2026-12-01T00:00:05Z"), 0, "ins_od", 5'000, 90, 1 << 30, 600'000, 3'000'000});
  send(last);
  send(Every10s(T("2026-11-30T22:00:10Z"), T("2026-11-30T23:00:00Z"), 1, "ins_sp"));
  ingest.Stop();
  while (metering::FoldUsage(*conn).work() > 0) {
  }

  pqxx::read_transaction tx(*conn);
  const auto november = RateUsage(RatedUsageOf(tx, "ten_r", T("2026-11-01T00:00:00Z"), T("2026-12-01T00:00:00Z")));
  ASSERT_EQ(november.size(), 2u);
  // ins_od in November: 21:59:59.500 to midnight, 7,200,500 GPU-ms. Samples ending up to 23:29:50 at
  // $2.49 (21:59:59.5 to 23:29:50: 5,390,500 ms); from the one ending 23:30:00 (the price at its ts)
  // at $3.00 (23:29:50 to 24:00: 1,810,000 ms). 5,390,500 × 2,490,000 + 1,810,000 × 3,000,000 =
  // 18,852,345,000,000 µ$·ms/h = $5.2367625: $5.24.
  const UsageLine& od = november[0];
  EXPECT_EQ(od.instance_id, "ins_od");
  EXPECT_EQ(od.market, "on_demand");
  EXPECT_EQ(od.gpu_ms, 7'200'500);
  EXPECT_EQ(od.unpriced_gpu_ms, 0);
  EXPECT_TRUE(od.amount.numerator() == static_cast<Int128>(18'852'345'000'000LL));
  EXPECT_EQ(FormatAmount(od.amount.Cents()), "5.24");
  EXPECT_EQ(FormatMicros(od.micro_gpu_hours()), "2.000139");
  // ins_sp, 22:00 to 23:00 held whole: at $1.00 the samples ending 22:00:10-22:09:50 (590,000 ms),
  // $1.10 22:10:00-22:19:50 (600,000), $0.90 22:20:00-22:45:20 (1,530,000), $1.30 22:45:30-23:00:00
  // (880,000): 3,771,000,000,000 µ$·ms/h = $1.0475 exactly: 104.75 cents, $1.05.
  const UsageLine& sp = november[1];
  EXPECT_EQ(sp.instance_id, "ins_sp");
  EXPECT_EQ(sp.market, "spot");
  EXPECT_EQ(sp.gpu_ms, 3'600'000);
  EXPECT_TRUE(sp.amount.numerator() == static_cast<Int128>(3'771'000'000'000LL));
  EXPECT_EQ(FormatAmount(sp.amount.Cents()), "1.05");
  EXPECT_EQ(FormatMicros(sp.average_price_micros()), "1.047500");
  // December: ins_od's first 2,500 ms of the sample across midnight's end, at $3.00: $0.0020833.
  const auto december = RateUsage(RatedUsageOf(tx, "ten_r", T("2026-12-01T00:00:00Z"), T("2027-01-01T00:00:00Z")));
  ASSERT_EQ(december.size(), 1u);
  EXPECT_EQ(december[0].gpu_ms, 2'500);
  EXPECT_TRUE(december[0].amount.numerator() == static_cast<Int128>(7'500'000'000LL));
  EXPECT_EQ(FormatAmount(december[0].amount.Cents()), "0.00");
  // Never more GPU time than the instances held: ins_od held 7,200,500 ms of November and 2,500 of December.
  // Beside each row its list price, the on-demand book's at the same ts: the spot rows' is $2.49
  // (the saving is list - price), an on-demand row's is its own price.
  EXPECT_EQ(tx.exec("SELECT string_agg(DISTINCT list_price_micros_per_gpu_hour::text, ',') FROM usage_rated_hourly "
                    "WHERE instance_id = 'ins_sp'")[0][0].as<std::string>(),
            "2490000");
  EXPECT_EQ(tx.exec("SELECT count(*) FROM usage_rated_hourly WHERE instance_id = 'ins_od' AND "
                    "list_price_micros_per_gpu_hour IS DISTINCT FROM price_micros_per_gpu_hour")[0][0].as<int>(),
            0);
  EXPECT_EQ(tx.exec("SELECT sum(gpu_ms) FROM usage_rated_hourly WHERE instance_id = 'ins_od' AND "
                    "list_price_micros_per_gpu_hour = 3000000")[0][0].as<std::int64_t>(),
            1'810'000 + 2'500);
}

TEST(Rating, TimeNoPriceCoveredIsReportedNeverBilledAtZero) {
  std::vector<RatedUsage> rows = {{"ins_a", "on_demand", T("2026-11-30T10:00:00Z"), 3'600'000, 2'490'000},
                                  {"ins_a", "on_demand", T("2026-11-30T11:00:00Z"), 1'000, std::nullopt},
                                  {"ins_b", "spot", T("2026-11-30T11:00:00Z"), 1'800'000, 1'000'000}};
  const auto lines = RateUsage(rows);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].gpu_ms, 3'601'000);
  EXPECT_EQ(lines[0].unpriced_gpu_ms, 1'000);
  EXPECT_EQ(FormatAmount(lines[0].amount.Cents()), "2.49");
  EXPECT_EQ(FormatMicros(lines[0].average_price_micros()), "2.490000");
  EXPECT_EQ(FormatAmount(lines[1].amount.Cents()), "0.50");
}
