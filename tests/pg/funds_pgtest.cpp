// Prepaid balances and spend limits against a real PostgreSQL (billing/funds): the balance counts
// rated GPU time and storage from the hour the tenant became prepaid, the burn rate its live
// instances and volumes at today's prices; alerts go out once per crossing and re-arm when the
// condition clears; an empty balance or a reached limit says to stop; a launch is refused with 402.
#include <gtest/gtest.h>

#include <functional>

#include "billing/funds.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "provisioning/hosts.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::billing;
using spillway::test::T;
using spillway::test::TestDb;
using namespace std::chrono_literals;

namespace {

struct Books {
  TestDb db;
  std::unique_ptr<pqxx::connection> conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  std::string host;
  Books() {
    host = InTransaction(*conn, [&](Tx& tx) {
      return RegisterHost(tx, {"gpu-f", "r1", "r1-a", {{0, 80LL << 30, "GPU-f-0", "H100-80GB"}, {1, 80LL << 30, "GPU-f-1", "H100-80GB"}}},
                          T("2026-10-01T00:00:00Z"))
          .host_id;
    });
    Exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ('ten_f', 'f', 8)");
    Exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES "
         "('H100-80GB', 'on_demand', 2000000, '2026-01-01T00:00:00Z')");
    Exec("INSERT INTO storage_prices (effective_from, price_micros_per_gb_month) VALUES ('2026-01-01T00:00:00Z', 100000)");
  }
  template <class... Params>
  void Exec(const std::string& sql, const Params&... params) { test::ExecSql(*conn, sql, params...); }
  std::string Text(const std::string& sql) { return test::SqlValue(*conn, sql); }
  void Rated(const char* hour, std::int64_t gpu_ms) {
    Exec("INSERT INTO usage_rated_hourly (hour, instance_id, tenant_id, market, price_micros_per_gpu_hour, gpu_ms) "
         "VALUES ($1, 'ins_f', 'ten_f', 'on_demand', 2000000, $2)",
         std::string(hour), gpu_ms);
  }
  Funds Of(const char* now) {
    pqxx::read_transaction tx(*conn);
    return FundsOf(tx, "ten_f", T(now));
  }
  std::vector<FundsVerdict> Evaluate(const char* now, Millis low = std::chrono::hours(2)) {
    return InTransaction(*conn, [&](Tx& tx) { return EvaluateFunds(tx, T(now), FundsSettings{low, std::chrono::hours(1)}); });
  }
  std::string Events() {
    return Text("SELECT string_agg(type || ':' || coalesce(data->>'threshold', data->>'threshold_percent'), ',' ORDER BY seq) "
                "FROM webhook_events");
  }
};

}  // namespace

TEST(Funds, ABalanceIsCreditLessRatedUsageAndStorageSinceItBecamePrepaid) {
  Books b;
  // A 2-GPU instance running since 09:00; a 100 GB volume; prepaid from 10:20 on the 5th (the
  // usage of 10:00's hour on spends credit; 09:00's does not).
  b.Exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id, started_at) "
         "VALUES ('ins_f', 'ten_f', 'h100.2x', 'H100-80GB', 2, 'r1', 'on_demand', 'running', $1, '2026-11-05T09:00:00Z')",
         b.host);
  b.Exec("INSERT INTO volumes (id, tenant_id, name, region, size_gb, created_at) VALUES "
         "('vol_f', 'ten_f', 'data', 'r1', 100, '2026-11-05T09:00:00Z')");
  InTransaction(*b.conn, [&](Tx& tx) {
    SetMode(tx, "ten_f", "prepaid", T("2026-11-05T10:20:00Z"));
    AddCredit(tx, "ten_f", 1000, "trial", "test", T("2026-11-05T10:20:00Z"));
  });
  b.Rated("2026-11-05T09:00:00Z", 7'200'000);  // before: not from the credit
  b.Rated("2026-11-05T10:00:00Z", 7'200'000);  // 2 GPU-hours at $2.00: $4.00
  // 100 GB for an hour of a 30-day month at $0.10 a GB-month: 13,888.9 µ$, rounded 13,889.
  b.Exec("INSERT INTO volume_usage_hourly (hour, volume_id, tenant_id, gb_ms) VALUES "
         "('2026-11-05T09:00:00Z', 'vol_f', 'ten_f', 360000000), ('2026-11-05T10:00:00Z', 'vol_f', 'ten_f', 360000000)");
  const Funds f = b.Of("2026-11-05T11:00:00Z");
  EXPECT_EQ(f.mode, "prepaid");
  EXPECT_EQ(f.credits_micros, 10'000'000);
  EXPECT_EQ(f.consumed_micros, 4'013'889);
  EXPECT_EQ(f.balance_micros(), 5'986'111);
  EXPECT_EQ(f.spent_this_month_micros, 8'027'778);  // the month's, from the 1st
  // Burn: 2 GPUs × $2.00 + 100 GB × $0.10 / 720 h = $4.013889 an hour; runway 5,986,111 × 3600 / it.
  EXPECT_EQ(f.burn_micros_per_hour, 4'013'889);
  EXPECT_EQ(f.runway_seconds(), 5368);
  // Under the 2 h runway threshold: one balance.low, not again on the next evaluation.
  auto v = b.Evaluate("2026-11-05T11:00:00Z");
  ASSERT_EQ(v.size(), 1u);
  EXPECT_FALSE(v[0].stop_reason);
  b.Evaluate("2026-11-05T11:00:30Z");
  EXPECT_EQ(b.Events(), "balance.low:runway");
  // Credit lifts it above the threshold: re-armed; then usage runs it to zero: one alert, and stop.
  InTransaction(*b.conn, [&](Tx& tx) { AddCredit(tx, "ten_f", 500, "top-up", "test", T("2026-11-05T11:01:00Z")); });
  b.Evaluate("2026-11-05T11:01:00Z");
  b.Rated("2026-11-05T11:00:00Z", 36'000'000);  // 10 GPU-hours: $20.00
  v = b.Evaluate("2026-11-05T12:00:00Z");
  EXPECT_EQ(v[0].stop_reason, "insufficient_funds");
  v = b.Evaluate("2026-11-05T12:00:05Z");
  EXPECT_EQ(v[0].stop_reason, "insufficient_funds") << "still out of funds: still stopping whatever runs";
  EXPECT_EQ(b.Events(), "balance.low:runway,balance.low:zero");
  // A launch is refused, saying the balance and the launch's burn.
  try {
    InTransaction(*b.conn, [&](Tx& tx) {
      CheckLaunchFunds(tx, "ten_f", LaunchBurnMicros(tx, "H100-80GB", "r1", "on_demand", 1, T("2026-11-05T12:00:06Z")),
                       T("2026-11-05T12:00:06Z"), FundsSettings{});
    });
    ADD_FAILURE() << "launched without funds";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 402);
    EXPECT_NE(std::string(e.what()).find("would burn $2.000000 an hour"), std::string::npos) << e.what();
  }
  // The ledger never changes.
  EXPECT_THROW(b.Exec("DELETE FROM credit_ledger"), pqxx::sql_error);
  EXPECT_THROW(b.Exec("TRUNCATE credit_ledger"), pqxx::sql_error);
}

// A balance prepaid since an earlier month: that month's hours from the prepaid hour on, then each
// whole month after it (read from the month sums the rated hours keep), none of the months before;
// a month's spend is its own hours alone. Each figure is checked against the rated hours added up.
TEST(Funds, ABalanceFromAnEarlierMonthCountsItsHoursFromThePrepaidHourAndEveryMonthAfter) {
  Books b;
  b.Exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id, started_at, "
         "ended_at, end_reason) VALUES ('ins_f', 'ten_f', 'h100.2x', 'H100-80GB', 2, 'r1', 'on_demand', 'terminated', $1, "
         "'2026-09-30T20:00:00Z', '2026-12-02T00:00:00Z', 'terminated')",
         b.host);
  InTransaction(*b.conn, [&](Tx& tx) {
    SetMode(tx, "ten_f", "prepaid", T("2026-10-15T10:20:00Z"));
    AddCredit(tx, "ten_f", 100'000, "prepaid", "test", T("2026-10-15T10:20:00Z"));
  });
  b.Rated("2026-09-30T23:00:00Z", 3'600'000);   // September: never
  b.Rated("2026-10-01T00:00:00Z", 3'600'000);   // October before the prepaid hour: not
  b.Rated("2026-10-15T09:00:00Z", 3'600'000);   // the hour before: not
  b.Rated("2026-10-15T10:00:00Z", 1'800'000);   // the prepaid hour: $1.00
  b.Rated("2026-10-31T23:00:00Z", 7'200'000);   // $4.00
  b.Rated("2026-11-01T00:00:00Z", 7'200'000);   // $4.00
  b.Rated("2026-11-30T23:00:00Z", 3'600'001);   // $2.000000556 (rounded once, on the sum)
  b.Rated("2026-12-01T05:00:00Z", 3'600'000);   // $2.00
  const auto rated_micros = [&](const char* from, const char* to) {
    return std::stoll(b.Text(std::string("SELECT coalesce(round(sum(gpu_ms::numeric * price_micros_per_gpu_hour) / 3600000), 0) "
                                         "FROM usage_rated_hourly WHERE hour >= date_trunc('hour', '") + from +
                             "'::timestamptz) AND hour < '" + to + "'"));
  };
  Funds f = b.Of("2026-12-01T06:00:00Z");
  EXPECT_EQ(f.consumed_micros - f.pending_micros, 13'000'001);
  EXPECT_EQ(f.consumed_micros - f.pending_micros, rated_micros("2026-10-15T10:20:00Z", "2027-01-01T00:00:00Z"));
  EXPECT_EQ(f.pending_micros, 0);  // no GPU held: nothing pending
  EXPECT_EQ(f.spent_this_month_micros, 2'000'000);
  EXPECT_EQ(f.spent_this_month_micros, rated_micros("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"));
  // A late hour of October, re-rated November hours, an hour refolded away: the sums follow.
  b.Rated("2026-10-20T03:00:00Z", 3'600'000);
  b.Exec("UPDATE usage_rated_hourly SET price_micros_per_gpu_hour = 3000000 WHERE hour = '2026-11-01T00:00:00Z'");
  b.Exec("DELETE FROM usage_rated_hourly WHERE hour = '2026-11-30T23:00:00Z'");
  f = b.Of("2026-12-01T06:00:00Z");
  EXPECT_EQ(f.consumed_micros - f.pending_micros, rated_micros("2026-10-15T10:20:00Z", "2027-01-01T00:00:00Z"));
  EXPECT_EQ(f.consumed_micros - f.pending_micros, 1'000'000 + 4'000'000 + 2'000'000 + 6'000'000 + 2'000'000);
  EXPECT_EQ(b.Text("SELECT string_agg(period || ':' || price_micros_per_gpu_hour || ':' || gpu_ms, ',' ORDER BY period, "
                   "price_micros_per_gpu_hour) FROM usage_rated_monthly WHERE gpu_ms <> 0"),
            "2026-09:2000000:3600000,2026-10:2000000:19800000,2026-11:3000000:7200000,2026-12:2000000:3600000");
  EXPECT_THROW(b.Exec("TRUNCATE usage_rated_hourly"), pqxx::sql_error);
}

TEST(Funds, AMonthlyLimitWarnsAtEightyPercentStopsAtAHundredOncePerMonthAndRaisingItLifts) {
  Books b;
  b.Exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id, started_at) "
         "VALUES ('ins_f', 'ten_f', 'h100.1x', 'H100-80GB', 1, 'r1', 'on_demand', 'running', $1, '2026-11-05T09:00:00Z')",
         b.host);
  InTransaction(*b.conn, [&](Tx& tx) { SetMonthlyLimit(tx, "ten_f", 1000, T("2026-11-05T09:00:00Z")); });  // $10
  b.Rated("2026-11-05T09:00:00Z", 14'400'000);  // $8.00: 80 %
  EXPECT_FALSE(b.Evaluate("2026-11-05T10:00:00Z")[0].stop_reason);
  b.Evaluate("2026-11-05T10:00:10Z");
  EXPECT_EQ(b.Events(), "spend_limit.reached:80");
  b.Rated("2026-11-05T10:00:00Z", 3'600'000);  // $10.00: 100 %
  EXPECT_EQ(b.Evaluate("2026-11-05T11:00:00Z")[0].stop_reason, "spend_limit");
  b.Evaluate("2026-11-05T11:00:10Z");
  EXPECT_EQ(b.Events(), "spend_limit.reached:80,spend_limit.reached:100");
  // Raised to $20: no stop; 50 %: no alert.
  InTransaction(*b.conn, [&](Tx& tx) { SetMonthlyLimit(tx, "ten_f", 2000, T("2026-11-05T11:01:00Z")); });
  EXPECT_FALSE(b.Evaluate("2026-11-05T11:01:00Z")[0].stop_reason);
  EXPECT_EQ(b.Events(), "spend_limit.reached:80,spend_limit.reached:100");
  // A new month starts from nothing.
  InTransaction(*b.conn, [&](Tx& tx) { SetMonthlyLimit(tx, "ten_f", 1000, T("2026-11-30T00:00:00Z")); });
  EXPECT_FALSE(b.Evaluate("2026-12-01T00:10:00Z")[0].stop_reason);
  // No limit, postpaid: nothing to evaluate.
  InTransaction(*b.conn, [&](Tx& tx) { SetMonthlyLimit(tx, "ten_f", std::nullopt, T("2026-12-01T00:11:00Z")); });
  EXPECT_TRUE(b.Evaluate("2026-12-01T00:12:00Z").empty());
}

// Spend controls act on what instances hold: a hold's time since the later of its host's
// folded_through and the instance's last rated sample is pending, at today's price, until its
// samples arrive (then it is rated instead, never both), or until it is older than
// metering.max_sample_age. Time the host reported past without a sample was never metered: it is
// not pending.
TEST(Funds, HeldTimeWhoseSamplesHaveNotArrivedIsPendingAndCountsOnce) {
  Books b;
  b.Exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id, started_at) "
         "VALUES ('ins_f', 'ten_f', 'h100.2x', 'H100-80GB', 2, 'r1', 'on_demand', 'running', $1, '2026-11-05T09:00:00Z')",
         b.host);
  b.Exec("INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at) VALUES "
         "('ins_f', $1, 0, '2026-11-05T09:00:00Z'), ('ins_f', $1, 1, '2026-11-05T09:00:00Z')",
         b.host);
  InTransaction(*b.conn, [&](Tx& tx) {
    SetMode(tx, "ten_f", "prepaid", T("2026-11-05T09:00:00Z"));
    AddCredit(tx, "ten_f", 1000, "trial", "test", T("2026-11-05T09:00:00Z"));
  });
  // Its samples are in up to 10:00 (the host's watermark, the instance's last sample): 2 GPU-hours.
  b.Exec("INSERT INTO host_watermarks (host_id, sampled_through, last_batch_seq, last_batch_at, clock_skew_ms, folded_through) "
         "VALUES ($1, '2026-11-05T10:00:00Z', 1, '2026-11-05T10:00:00Z', 0, '2026-11-05T10:00:00Z')",
         b.host);
  b.Exec("INSERT INTO usage_hourly (hour, instance_id, tenant_id, gpu_ms, samples, util_pct_mean, util_pct_ms, energy_mj, "
         "mem_peak_bytes, last_sample_at) VALUES ('2026-11-05T09:00:00Z', 'ins_f', 'ten_f', 7200000, 720, 50, 360000000, 0, 0, "
         "'2026-11-05T10:00:00Z')");
  b.Rated("2026-11-05T09:00:00Z", 7'200'000);  // $4.00
  // The host falls silent at 10:00: half an hour later, 2 GPUs × 0.5 h × $2.00 are pending.
  Funds f = b.Of("2026-11-05T10:30:00Z");
  EXPECT_EQ(f.pending_micros, 2'000'000);
  EXPECT_EQ(f.consumed_micros, 6'000'000);
  EXPECT_EQ(f.balance_micros(), 4'000'000);
  EXPECT_EQ(f.spent_this_month_micros, 6'000'000) << "a spend limit sees it too";
  // Its backlog lands and is folded: rated now, pending no more; the sum is the same.
  b.Exec("INSERT INTO usage_hourly (hour, instance_id, tenant_id, gpu_ms, samples, util_pct_mean, util_pct_ms, energy_mj, "
         "mem_peak_bytes, last_sample_at) VALUES ('2026-11-05T10:00:00Z', 'ins_f', 'ten_f', 3600000, 360, 50, 180000000, 0, 0, "
         "'2026-11-05T10:30:00Z')");
  b.Rated("2026-11-05T10:00:00Z", 3'600'000);
  b.Exec("UPDATE host_watermarks SET sampled_through = '2026-11-05T10:30:00Z', folded_through = '2026-11-05T10:30:00Z'");
  f = b.Of("2026-11-05T10:30:00Z");
  EXPECT_EQ(f.pending_micros, 0);
  EXPECT_EQ(f.consumed_micros, 6'000'000);
  // Stopped at 10:45 (the holds released) with the host silent again: pending stops at the release.
  b.Exec("UPDATE gpu_allocation_history SET released_at = '2026-11-05T10:45:00Z'");
  b.Exec("UPDATE instances SET state = 'terminated', ended_at = '2026-11-05T10:45:00Z', end_reason = 'terminated'");
  EXPECT_EQ(b.Of("2026-11-05T11:00:00Z").pending_micros, 1'000'000);
  EXPECT_EQ(b.Of("2026-11-05T12:00:00Z").pending_micros, 1'000'000);
  // Past metering.max_sample_age those samples could never be billed: nothing is pending.
  EXPECT_EQ(b.Of("2026-11-12T11:00:00Z").pending_micros, 0);
  // The host reports past 10:45 with no sample of it (its agent was stopped): never metered, not pending.
  b.Exec("UPDATE host_watermarks SET folded_through = '2026-11-05T11:00:00Z'");
  EXPECT_EQ(b.Of("2026-11-05T12:00:00Z").pending_micros, 0);
  EXPECT_EQ(b.Of("2026-11-05T12:00:00Z").consumed_micros, 6'000'000);
}

// Money at the documented maxima (billing/exact_amount.hpp): credits up to kMaxAmountCents each and
// in all, limits up to it, prices up to kMaxPriceMicros and a year of the largest tenant-month. Every
// sum is exact in 128 bits, and a value past a maximum is InvalidInput naming its field, never a
// wrapped amount or a database error.
TEST(Funds, BalancesAndLimitsAreExactAtTheDocumentedMaxima) {
  Books b;
  b.Exec("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, host_id, started_at) "
         "VALUES ('ins_f', 'ten_f', 'h100.1x', 'H100-80GB', 1, 'r1', 'on_demand', 'running', $1, '2025-12-01T00:00:00Z')",
         b.host);
  const auto invalid = [&](const std::function<void(Tx&)>& f, const std::string& field) {
    try {
      InTransaction(*b.conn, f);
      ADD_FAILURE() << "accepted a value past " << field << "'s maximum";
    } catch (const InvalidInput& e) {
      EXPECT_EQ(std::string(e.what()).rfind(field + ":", 0), 0u) << e.what();
    }
  };
  InTransaction(*b.conn, [&](Tx& tx) { SetMode(tx, "ten_f", "prepaid", T("2025-12-01T00:00:00Z")); });
  invalid([&](Tx& tx) { AddCredit(tx, "ten_f", kMaxAmountCents + 1, "x", "test", T("2025-12-01T00:00:00Z")); }, "amount");
  InTransaction(*b.conn, [&](Tx& tx) { AddCredit(tx, "ten_f", kMaxAmountCents, "max", "test", T("2025-12-01T00:00:00Z")); });
  invalid([&](Tx& tx) { AddCredit(tx, "ten_f", 1, "one more cent", "test", T("2025-12-01T00:00:01Z")); }, "amount");
  // Limits: past 32 bits of cents is fine (it was a 500), past the maximum is not.
  InTransaction(*b.conn, [&](Tx& tx) { SetMonthlyLimit(tx, "ten_f", 2'147'483'648LL, T("2025-12-01T00:00:00Z")); });
  InTransaction(*b.conn, [&](Tx& tx) { SetMonthlyLimit(tx, "ten_f", kMaxAmountCents, T("2025-12-01T00:00:00Z")); });
  invalid([&](Tx& tx) { SetMonthlyLimit(tx, "ten_f", kMaxAmountCents + 1, T("2025-12-01T00:00:00Z")); }, "monthly_limit");
  // A year of the largest tenant-month: kMaxTenantGpus for every millisecond of each month at
  // kMaxPriceMicros (7.4e19 µ$ a month, past 64 bits).
  Int128 expected = 0, this_month = 0;
  for (int m = 0; m < 12; ++m) {
    const Month month = MonthOf(T("2025-12-01T00:00:00Z") + std::chrono::hours(24 * 31) * m);
    const std::int64_t gpu_ms = kMaxTenantGpus * (EpochMs(month.end) - EpochMs(month.begin));
    b.Exec("INSERT INTO usage_rated_hourly (hour, instance_id, tenant_id, market, price_micros_per_gpu_hour, gpu_ms) "
           "VALUES ($1::timestamptz, 'ins_f', 'ten_f', 'on_demand', $2, $3)",
           FormatTime(month.begin), kMaxPriceMicros, gpu_ms);
    const Int128 micros = DivideHalfEven(static_cast<Int128>(gpu_ms) * kMaxPriceMicros, kMsPerHour);
    expected += micros;
    if (month.Label() == "2026-11") this_month = micros;
  }
  const Funds f = b.Of("2026-11-15T00:00:00Z");
  EXPECT_EQ(f.credits_micros, static_cast<Int128>(kMaxAmountCents) * kMicrosPerCent);
  EXPECT_EQ(f.consumed_micros, expected);
  EXPECT_EQ(f.balance_micros(), static_cast<Int128>(kMaxAmountCents) * kMicrosPerCent - expected);
  EXPECT_LT(f.balance_micros(), static_cast<Int128>(INT64_MIN)) << "the sum is past 64 bits, and exact";
  EXPECT_EQ(f.spent_this_month_micros, this_month);
  EXPECT_EQ(FormatMicrosWide(f.credits_micros), "1000000000000.000000");
  EXPECT_EQ(FormatMicrosWide(-f.consumed_micros).substr(0, 1), "-");
  // Evaluated at those figures: stopped, and the alert says the exact balance.
  const auto v = b.Evaluate("2026-11-15T00:00:00Z");
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].stop_reason, "insufficient_funds");
  EXPECT_NE(b.Text("SELECT data->>'balance' FROM webhook_events WHERE type = 'balance.low'"), "");
  EXPECT_EQ(b.Text("SELECT data->>'balance' FROM webhook_events WHERE type = 'balance.low'"),
            FormatMicrosWide(f.balance_micros()));
}
