// The spare-capacity revenue report on a hand-computed month: on-demand and spot GPU time in one
// pool with the list price at each row's time, idle GPU time from the pool rollups, storage.
#include <gtest/gtest.h>

#include "billing/invoices.hpp"
#include "billing/reports.hpp"
#include "metering/fold.hpp"
#include "metering/usage.hpp"
#include "core/db.hpp"
#include "core/money.hpp"
#include "provisioning/hosts.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::billing;
using spillway::test::TestDb;
using namespace std::chrono_literals;

TEST(RevenueReport, SoldSpotDiscountSpareOfferedAndStoragePerPoolExactly) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  const std::string host = InTransaction(*conn, [&](Tx& tx) {
    return RegisterHost(tx, {"rev-1", "r1", "r1-a", {{0, 80LL << 30, "GPU-rev-0", "H100-80GB"}}}, *ParseTime("2026-10-01T00:00:00Z"))
        .host_id;
  });
  {
    pqxx::work tx(*conn);
    tx.exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ('ten_r', 'r', 8)");
    for (const char* row : {"('ins_od', 'on_demand')", "('ins_sp', 'spot')"})
      tx.exec(std::string("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id, "
                          "started_at, ended_at, end_reason) SELECT v.id, 'ten_r', 'h100.1x', 'H100-80GB', 1, 'r1', v.market, "
                          "'terminated', '") + host + "', '2026-11-01', '2026-11-02', 'terminated' FROM (VALUES " + row +
              ") AS v (id, market)");
    // On-demand: 2 h at $2.49 (list $2.49). Spot: 1 h at $1.00 and 30 min at $0.90 while the list was
    // $2.49, and 30 min at $1.20 while it was $3.00.
    tx.exec("INSERT INTO usage_rated_hourly (hour, instance_id, tenant_id, market, price_micros_per_gpu_hour, "
            "list_price_micros_per_gpu_hour, gpu_ms) VALUES "
            "('2026-11-01T10:00:00Z', 'ins_od', 'ten_r', 'on_demand', 2490000, 2490000, 7200000), "
            "('2026-11-01T10:00:00Z', 'ins_sp', 'ten_r', 'spot', 1000000, 2490000, 3600000), "
            "('2026-11-01T11:00:00Z', 'ins_sp', 'ten_r', 'spot', 900000, 2490000, 1800000), "
            "('2026-11-01T11:00:00Z', 'ins_sp', 'ten_r', 'spot', 1200000, 3000000, 1800000), "
            "('2026-12-01T00:00:00Z', 'ins_sp', 'ten_r', 'spot', 1200000, 3000000, 3600000)");  // another month
    tx.exec("INSERT INTO pool_usage_hourly (hour, region, gpu_model, allocated_gpu_ms, idle_gpu_ms, samples, util_pct_mean, "
            "util_pct_ms, energy_mj) VALUES ('2026-11-01T10:00:00Z', 'r1', 'H100-80GB', 10800000, 3600000, 10, 50, 720000000, 0), "
            "('2026-11-01T11:00:00Z', 'r1', 'H100-80GB', 3600000, 10800000, 10, 50, 720000000, 0)");
    // 300 GB for the whole of November (30 days) at $0.10 per GB-month: $30.00.
    tx.exec("INSERT INTO storage_prices (effective_from, price_micros_per_gb_month) VALUES ('2026-01-01', 100000)");
    tx.exec("INSERT INTO volumes (id, tenant_id, name, region, size_gb, created_at) VALUES "
            "('vol_r', 'ten_r', 'data', 'r1', 300, '2026-10-20T00:00:00Z')");
    tx.commit();
  }
  pqxx::read_transaction tx(*conn);
  const RevenueReport r = RevenueOf(tx, *ParseMonth("2026-11"), *ParseTime("2026-12-05T00:00:00Z"));
  EXPECT_FALSE(r.closed);
  ASSERT_EQ(r.lines.size(), 2u);
  const RevenueLine& od = r.lines[0];
  EXPECT_EQ(od.market, "on_demand");
  EXPECT_EQ(od.gpu_ms, 7'200'000);
  EXPECT_EQ(FormatCents(od.billed.Micros()), "4.98");
  EXPECT_EQ(od.discount_cents(), 0);
  const RevenueLine& sp = r.lines[1];
  EXPECT_EQ(sp.market, "spot");
  EXPECT_EQ(sp.gpu_ms, 7'200'000);
  // Billed: 1.00 + 0.45 + 0.60 = $2.05. List: 2.49 + 1.245 + 1.50 = $5.235: $5.24 (half-even on
  // 523.5 cents). Discount: $5.24 - $2.05 = $3.19.
  EXPECT_EQ(sp.billed.Cents(), 205);
  EXPECT_EQ(sp.list.Cents(), 524);
  EXPECT_EQ(sp.discount_cents(), 319);
  ASSERT_EQ(r.pools.size(), 1u);
  EXPECT_EQ(r.pools[0].idle_gpu_ms, 14'400'000);                 // 4 idle GPU-hours unsold
  EXPECT_EQ(r.pools[0].spot_sold_gpu_ms, 7'200'000);             // 2 sold as spot
  EXPECT_EQ(r.pools[0].offered_gpu_ms(), 21'600'000);            // 6 offered
  ASSERT_EQ(r.storage.size(), 1u);
  EXPECT_EQ(r.storage[0].region, "r1");
  EXPECT_EQ(r.storage[0].gb_ms, 300LL * 30 * 86'400'000);
  EXPECT_EQ(r.storage[0].amount.Cents(), 3000);
  // Asked on the 16th, the month so far: 15 days of storage, never the rest of the month ahead.
  const RevenueReport mid = RevenueOf(tx, *ParseMonth("2026-11"), *ParseTime("2026-11-16T00:00:00Z"));
  ASSERT_EQ(mid.storage.size(), 1u);
  EXPECT_EQ(mid.storage[0].gb_ms, 300LL * 15 * 86'400'000);
  EXPECT_EQ(mid.storage[0].amount.Cents(), 1500);
}

// Held GPU time no sample covered (metering::JudgeUnmeteredHours): an instance on 2 GPUs held
// 10:00-12:30 whose agent was stopped 10:40-11:10 has 2 × 30 min never metered. Each instance-hour
// is judged once its host reported past the hour, once only; the report shows it per pool, not
// billed, at the list price in effect at each hour's start.
namespace {
// An instance on 2 GPUs held 10:00-12:30 on the 5th of November; its agent was stopped 10:40-11:10.
struct Unmetered {
  TestDb db;
  std::unique_ptr<pqxx::connection> conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  std::string host;
  void Exec(const std::string& sql) { test::ExecSql(*conn, sql); }
  explicit Unmetered(const std::string& folded_through = "2026-11-05T13:00:00Z") {
    host = InTransaction(*conn, [&](Tx& tx) {
      return RegisterHost(tx, {"unm-1", "r1", "r1-a", {{0, 80LL << 30, "GPU-unm-0", "H100-80GB"}, {1, 80LL << 30, "GPU-unm-1", "H100-80GB"}}},
                          *ParseTime("2026-10-01T00:00:00Z"))
          .host_id;
    });
    Exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ('ten_u', 'u', 8)");
    Exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES "
         "('H100-80GB', 'on_demand', 2000000, '2026-01-01'), ('H100-80GB', 'on_demand', 4000000, '2026-11-05T11:00:00Z')");
    Exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id, started_at, "
         "ended_at, end_reason) VALUES ('ins_u', 'ten_u', 'h100.2x', 'H100-80GB', 2, 'r1', 'on_demand', 'terminated', '" + host +
         "', '2026-11-05T10:00:00Z', '2026-11-05T12:30:00Z', 'terminated')");
    Exec("INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at, released_at) VALUES "
         "('ins_u', '" + host + "', 0, '2026-11-05T10:00:00Z', '2026-11-05T12:30:00Z'), "
         "('ins_u', '" + host + "', 1, '2026-11-05T10:00:00Z', '2026-11-05T12:30:00Z')");
    // Metered: 10:00 hour 2 × 40 min, 11:00 hour 2 × 50 min, 12:00 hour 2 × 30 min.
    Exec("INSERT INTO usage_hourly (hour, instance_id, tenant_id, gpu_ms, samples, util_pct_mean, util_pct_ms, energy_mj, "
         "mem_peak_bytes, last_sample_at) VALUES "
         "('2026-11-05T10:00:00Z', 'ins_u', 'ten_u', 4800000, 1, 50, 240000000, 0, 0, '2026-11-05T10:40:00Z'), "
         "('2026-11-05T11:00:00Z', 'ins_u', 'ten_u', 6000000, 1, 50, 300000000, 0, 0, '2026-11-05T12:00:00Z'), "
         "('2026-11-05T12:00:00Z', 'ins_u', 'ten_u', 3600000, 1, 50, 180000000, 0, 0, '2026-11-05T12:30:00Z')");
    Exec("INSERT INTO host_watermarks (host_id, sampled_through, last_batch_seq, last_batch_at, clock_skew_ms, folded_through) "
         "VALUES ('" + host + "', '" + folded_through + "', 1, '" + folded_through + "', 0, '" + folded_through + "')");
  }
};
}  // namespace

// With billing.unmetered_held_time = bill that time is rated when judged, at the price in effect at
// each hour's start, and the invoice line says how much of it was never metered; the metering fold
// refolding the hour leaves it; the report says what was billed of it.
TEST(RevenueReport, HeldTimeNoSampleCoveredIsBilledWhenTheOperatorSaysSo) {
  Unmetered u;
  const auto judged = metering::JudgeUnmeteredHours(*u.conn, 100, /*bill=*/true);
  ASSERT_EQ(judged.size(), 1u);
  EXPECT_EQ(judged[0].unmetered_gpu_ms, 3'600'000);
  EXPECT_EQ(test::SqlValue(*u.conn, "SELECT string_agg(hour || ' ' || price_micros_per_gpu_hour || ' ' || gpu_ms, ', ' "
                                    "ORDER BY hour) FROM usage_rated_hourly WHERE unmetered"),
            "2026-11-05 10:00:00+00 2000000 2400000, 2026-11-05 11:00:00+00 4000000 1200000");
  EXPECT_EQ(test::SqlValue(*u.conn, "SELECT count(*) FROM billing_dirty WHERE tenant_id = 'ten_u' AND period = '2026-11'"), "1");
  // The fold rewrites the hour's metered rows only.
  u.Exec("INSERT INTO usage_dirty_hours (hour, marked_at) VALUES ('2026-11-05T10:00:00Z', now()) ON CONFLICT DO NOTHING");
  metering::FoldUsage(*u.conn);
  EXPECT_EQ(test::SqlValue(*u.conn, "SELECT count(*) FROM usage_rated_hourly WHERE unmetered"), "2");
  // The draft bills it on the instance's line, saying so: 40 GPU-min at $2.00 + 20 at $4.00 = $2.67.
  BillingSettings settings;
  settings.bill_unmetered_held_time = true;
  DraftInvoices(*u.conn, *ParseTime("2026-11-05T13:05:00Z"), settings);
  pqxx::read_transaction tx(*u.conn);
  InvoiceQuery q;
  q.tenant_id = "ten_u";
  const auto invoices = ListInvoices(tx, q);
  ASSERT_EQ(invoices.size(), 1u);
  const InvoiceLine& line = invoices[0].invoice.lines.at(0);
  EXPECT_EQ(line.amount_cents, 267) << line.description;
  EXPECT_NE(line.description.find("1.000000 GPU-hours of it were held but never metered"), std::string::npos)
      << line.description;
  const RevenueReport r = RevenueOf(tx, *ParseMonth("2026-11"), *ParseTime("2026-12-05T00:00:00Z"));
  ASSERT_EQ(r.unmetered.size(), 1u);
  EXPECT_EQ(r.unmetered[0].billed.Cents(), 267);
  EXPECT_EQ(r.unmetered[0].list.Cents(), 267);
}

TEST(RevenueReport, HeldTimeNoSampleCoveredIsJudgedOnceSettledAndReportedPerPool) {
  // The host has reported up to 11:20: only the 10:00 hour is settled (the host's first hold's hour on).
  Unmetered u("2026-11-05T11:20:00Z");
  auto& conn = u.conn;
  auto judged = metering::JudgeUnmeteredHours(*conn, 100);
  ASSERT_EQ(judged.size(), 1u);
  EXPECT_EQ(judged[0].region, "r1");
  EXPECT_EQ(judged[0].held_gpu_ms, 7'200'000);
  EXPECT_EQ(judged[0].unmetered_gpu_ms, 2'400'000);  // 2 × 20 min
  const auto again = metering::JudgeUnmeteredHours(*conn, 100);
  ASSERT_EQ(again.size(), 1u) << "every pool, judged or not";
  EXPECT_EQ(again[0].held_gpu_ms, 0) << "an hour is judged once";
  // Past the end: the rest settles.
  u.Exec("UPDATE host_watermarks SET folded_through = '2026-11-05T13:00:00Z'");
  judged = metering::JudgeUnmeteredHours(*conn, 100);
  ASSERT_EQ(judged.size(), 1u);
  EXPECT_EQ(judged[0].held_gpu_ms, 7'200'000 + 3'600'000);
  EXPECT_EQ(judged[0].unmetered_gpu_ms, 1'200'000);  // 11:00's 2 × 10 min; 12:00 was all metered
  EXPECT_EQ(test::SqlValue(*conn, "SELECT count(*) FROM unmetered_hourly"), "2");
  pqxx::read_transaction tx(*conn);
  const RevenueReport r = RevenueOf(tx, *ParseMonth("2026-11"), *ParseTime("2026-12-05T00:00:00Z"));
  ASSERT_EQ(r.unmetered.size(), 1u);
  EXPECT_EQ(r.unmetered[0].gpu_model, "H100-80GB");
  EXPECT_EQ(r.unmetered[0].gpu_ms, 3'600'000);
  // 40 GPU-minutes at $2.00 and 20 at $4.00 (the list price at each hour's start): $1.333… + $1.333….
  EXPECT_EQ(r.unmetered[0].list.Cents(), 267);
  EXPECT_EQ(r.unmetered[0].billed.Cents(), 0) << "billing.unmetered_held_time = forgive: none of it billed";
}
