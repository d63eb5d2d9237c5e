// The incremental fold against a full refold, row for row, over random histories: samples through
// the real ingest path in shuffled order (late batches), price changes entered for times already
// folded (on-demand and spot, inside hours), hours marked to refold by hand, folds at random points,
// across a month's turn. Whatever the order, the rollups a pass leaves must be those a refold of
// every hour from the stored samples gives.
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <random>

#include "core/db.hpp"
#include "metering/fold.hpp"
#include "metering/ingest.hpp"
#include "provisioning/hosts.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using spillway::test::TestDb;
using namespace std::chrono_literals;

namespace {

TimeMs T(const char* iso) { return *ParseTime(iso); }

std::vector<std::string> Rows(pqxx::connection& c, const std::string& sql) {
  pqxx::read_transaction tx(c);
  std::vector<std::string> out;
  for (const auto& r : tx.exec(sql)) {
    std::string line;
    for (const auto& f : r) line += (f.is_null() ? std::string("NULL") : f.as<std::string>()) + " | ";
    out.push_back(line);
  }
  return out;
}
std::int64_t Scalar(pqxx::connection& c, const std::string& sql) {
  pqxx::read_transaction tx(c);
  const auto f = tx.exec1(sql)[0];
  return f.is_null() ? 0 : f.as<std::int64_t>();
}

const char* const kInstanceRows =
    "SELECT hour, instance_id, tenant_id, gpu_ms, samples, util_pct_ms, util_pct_mean, energy_mj, mem_peak_bytes, "
    "last_sample_at FROM usage_hourly ORDER BY hour, instance_id";
const char* const kPoolRows =
    "SELECT hour, region, gpu_model, allocated_gpu_ms, idle_gpu_ms, samples, util_pct_ms, util_pct_mean, energy_mj "
    "FROM pool_usage_hourly ORDER BY hour, region, gpu_model";
const char* const kRatedRows =
    "SELECT hour, instance_id, tenant_id, market, price_micros_per_gpu_hour, list_price_micros_per_gpu_hour, gpu_ms, "
    "unmetered FROM usage_rated_hourly ORDER BY hour, instance_id, price_micros_per_gpu_hour NULLS FIRST, "
    "list_price_micros_per_gpu_hour NULLS FIRST";

// The month sums as kept by usage_rated_hourly's triggers, and as the hourly rows add up now.
const char* const kMonthlyKept =
    "SELECT tenant_id, period, instance_id, market, price_micros_per_gpu_hour, unmetered, gpu_ms "
    "FROM usage_rated_monthly WHERE gpu_ms <> 0 ORDER BY 1, 2, 3, 4, 5 NULLS FIRST, 6";
const char* const kMonthlyOfHours =
    "SELECT tenant_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), instance_id, market, price_micros_per_gpu_hour, "
    "unmetered, sum(gpu_ms)::bigint FROM usage_rated_hourly GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(gpu_ms) <> 0 "
    "ORDER BY 1, 2, 3, 4, 5 NULLS FIRST, 6";

void ExpectSameRows(const std::vector<std::string>& incremental, const std::vector<std::string>& refolded,
                    const char* table, std::uint32_t seed) {
  EXPECT_EQ(incremental.size(), refolded.size()) << table << " (seed " << seed << ")";
  for (std::size_t i = 0; i < std::min(incremental.size(), refolded.size()); ++i)
    if (incremental[i] != refolded[i]) {
      ADD_FAILURE() << table << " row " << i << " (seed " << seed << ")\n  incremental: " << incremental[i]
                    << "\n  refolded:    " << refolded[i];
      return;
    }
}

struct Gpu {
  std::string host;
  int index;
  std::string instance;  // "" for none
  TimeMs held_from, held_to;
};

void RunHistory(std::uint32_t seed) {
  TestDb db;
  auto conn = OpenSession({db.dsn(), "spillway-test", 3000ms, 30000ms});
  std::mt19937 rng(seed);
  const auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  const TimeMs begin = T("2026-11-30T21:30:00Z"), end = T("2026-12-01T02:00:00Z");

  std::string host_a, host_b;
  InTransaction(*conn, [&](Tx& tx) {
    host_a = RegisterHost(tx, {"fold-a", "r1", "r1-a", {{0, 80LL << 30, "GPU-a-0", "H100-80GB"},
                                                        {1, 80LL << 30, "GPU-a-1", "H100-80GB"}}},
                          begin - 1h)
                 .host_id;
    host_b = RegisterHost(tx, {"fold-b", "r2", "r2-a", {{0, 80LL << 30, "GPU-b-0", "H100-80GB"},
                                                        {1, 80LL << 30, "GPU-b-1", "H100-80GB"}}},
                          begin - 1h)
                 .host_id;
  });
  std::vector<Gpu> gpus = {
      {host_a, 0, "ins_a0", T("2026-11-30T22:10:00.250Z"), T("2026-12-01T00:40:00Z")},
      {host_a, 1, "ins_a1", T("2026-11-30T22:00:00Z"), T("2026-12-01T01:30:07.5Z")},
      {host_b, 0, "ins_b0", T("2026-11-30T23:20:00Z"), T("2026-12-01T01:50:00Z")},
      {host_b, 1, "ins_b1", T("2026-11-30T21:55:00Z"), T("2026-12-01T00:05:00Z")},
  };
  {
    pqxx::work tx(*conn);
    tx.exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ('ten_f', 'fold', 8), ('ten_g', 'other', 8)");
    const char* markets[] = {"on_demand", "spot", "spot", "on_demand"};
    const char* tenants[] = {"ten_f", "ten_f", "ten_g", "ten_g"};
    for (std::size_t i = 0; i < gpus.size(); ++i) {
      const Gpu& g = gpus[i];
      tx.exec_params("INSERT INTO instances (id, tenant_id, instance_type, gpu_model, gpus, region, market, state, "
                     "host_id, started_at, ended_at, end_reason) VALUES ($1, $2, 'h100.1x', 'H100-80GB', 1, $3, $4, "
                     "'terminated', $5, to_timestamp($6::bigint / 1000.0), to_timestamp($7::bigint / 1000.0), 'terminated')",
                     g.instance, std::string(tenants[i]), std::string(g.host == host_a ? "r1" : "r2"),
                     std::string(markets[i]), g.host, EpochMs(g.held_from), EpochMs(g.held_to));
      tx.exec_params("INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at, released_at) "
                     "VALUES ($1, $2, $3, to_timestamp($4::bigint / 1000.0), to_timestamp($5::bigint / 1000.0))",
                     g.instance, g.host, g.index, EpochMs(g.held_from), EpochMs(g.held_to));
    }
    tx.exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES "
            "('H100-80GB', 'on_demand', 2490000, '2026-01-01T00:00:00Z')");
    tx.exec("INSERT INTO spot_prices (region, gpu_model, effective_from, price_micros_per_gpu_hour, on_demand_micros, "
            "spare_fraction_ppm, target_micros) VALUES "
            "('r1', 'H100-80GB', '2026-01-01T00:00:00Z', 1000000, 2490000, 500000, 1000000), "
            "('r2', 'H100-80GB', '2026-01-01T00:00:00Z', 1200000, 2490000, 500000, 1200000)");
    tx.commit();
  }

  // Each GPU's samples, contiguous, of 1 to 20 s, naming its instance when they lie in its hold;
  // cut into batches of 1 to 30 samples.
  struct Pending {
    std::string host;
    protocol::SampleBatch batch;
    TimeMs sent_at;
  };
  std::vector<Pending> batches;
  for (const Gpu& g : gpus) {
    TimeMs t = begin;
    std::vector<protocol::Sample> run;
    const auto flush = [&] {
      if (run.empty()) return;
      protocol::SampleBatch b;
      b.samples = std::move(run);
      run.clear();
      for (const auto& s : b.samples) b.sampled_through_ms = std::max(b.sampled_through_ms, s.ts_ms);
      batches.push_back({g.host, std::move(b), {}});
    };
    int left = 1 + static_cast<int>(rng() % 30);
    while (t < end) {
      const Millis interval(1'000 + static_cast<std::int64_t>(rng() % 19'000));
      const TimeMs ts = t + interval;
      std::optional<std::string> instance;
      // Within the hold widened by ingest's tolerance (5 s): cut at its ends when stored.
      if (t >= g.held_from - 4s && ts <= g.held_to + 4s) instance = g.instance;
      run.push_back({ts, g.index, instance, interval.count(), static_cast<int>(rng() % 101),
                     static_cast<std::int64_t>(rng() % (80LL << 30)), 100'000 + static_cast<std::int64_t>(rng() % 600'000),
                     static_cast<std::int64_t>(rng() % 10'000'000)});
      t = ts;
      if (--left == 0) {
        flush();
        left = 1 + static_cast<int>(rng() % 30);
      }
    }
    flush();
  }
  // Sent in time order, but one batch in eight up to two hours late.
  for (auto& p : batches) {
    p.sent_at = p.batch.sampled_through_ms;
    if (chance(0.125)) p.sent_at += Millis(static_cast<std::int64_t>(rng() % 7'200'000));
  }
  std::stable_sort(batches.begin(), batches.end(), [](const Pending& a, const Pending& b) { return a.sent_at < b.sent_at; });

  prometheus::Registry registry;
  FakeClock clock(end + 5min);
  metering::Ingestor ingest({db.dsn(), "spillway-ingest", 3000ms, 30000ms}, metering::IngestSettings{}, clock, registry);
  ingest.Start();
  std::map<std::string, std::int64_t> seq;
  std::int64_t price_changes = 0, marked = 0, folds = 0;
  for (auto& p : batches) {
    p.batch.batch_seq = seq[p.host]++;
    const auto r = ingest.SubmitAndWait(p.host, p.batch);
    ASSERT_EQ(r.kind, metering::IngestResult::Kind::kAccepted) << r.message;
    if (chance(0.15)) {
      metering::FoldUsage(*conn, {48, 1 + static_cast<int>(rng() % 5), 2});
      ++folds;
    }
    if (chance(0.03)) {  // a price for a time anywhere in the history: folded samples may reach past it
      const TimeMs at = begin + Millis(static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>((end - begin).count())));
      const std::int64_t micros = 500'000 + static_cast<std::int64_t>(rng() % 1'900'000);  // below list
      pqxx::work tx(*conn);
      // A microsecond offset keeps two changes apart, as clock_timestamp() does.
      const std::string from = "to_timestamp(" + std::to_string(EpochMs(at)) + " / 1000.0) + interval '" +
                               std::to_string(price_changes + 1) + " microseconds'";
      if (chance(0.3))
        tx.exec_params("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES "
                       "('H100-80GB', 'on_demand', $1, " + from + ")",
                       micros);
      else
        tx.exec_params("INSERT INTO spot_prices (region, gpu_model, effective_from, price_micros_per_gpu_hour, "
                       "on_demand_micros, spare_fraction_ppm, target_micros) VALUES ($1, 'H100-80GB', " + from +
                           ", $2, 2490000, 500000, $2)",
                       std::string(chance(0.5) ? "r1" : "r2"), micros);
      tx.commit();
      ++price_changes;
    }
    if (chance(0.01)) {  // an hour marked to refold by hand
      pqxx::work tx(*conn);
      tx.exec_params("INSERT INTO usage_dirty_hours VALUES (date_trunc('hour', to_timestamp($1::bigint / 1000.0)), now()) "
                     "ON CONFLICT DO NOTHING",
                     EpochMs(p.batch.sampled_through_ms));
      tx.commit();
      ++marked;
    }
  }
  ingest.Stop();
  while (metering::FoldUsage(*conn).work() > 0) {
  }
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM ingest_ticks"), 0);
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM rating_price_changes"), 0);
  EXPECT_GT(folds, 10);
  EXPECT_GT(price_changes, 0) << "seed " << seed;

  // Independently of either fold: every attributed millisecond is rated once, at some price.
  EXPECT_EQ(Scalar(*conn, "SELECT sum(gpu_ms) FROM usage_rated_hourly"),
            Scalar(*conn, "SELECT sum(interval_ms) FROM usage_samples WHERE instance_id IS NOT NULL"));
  EXPECT_EQ(Scalar(*conn, "SELECT sum(allocated_gpu_ms + idle_gpu_ms) FROM pool_usage_hourly"),
            Scalar(*conn, "SELECT sum(interval_ms) FROM usage_samples"));
  EXPECT_EQ(Scalar(*conn, "SELECT count(*) FROM billing_dirty WHERE period IN ('2026-11', '2026-12')"), 4);

  const auto instance = Rows(*conn, kInstanceRows), pool = Rows(*conn, kPoolRows), rated = Rows(*conn, kRatedRows);
  // Every change to the rated hours (added to, re-rated, refolded) is in the month sums.
  ExpectSameRows(Rows(*conn, kMonthlyKept), Rows(*conn, kMonthlyOfHours), "usage_rated_monthly", seed);
  {
    pqxx::work tx(*conn);
    metering::MarkEveryHourToRefold(tx);
    tx.commit();
  }
  while (metering::FoldUsage(*conn).work() > 0) {
  }
  ExpectSameRows(instance, Rows(*conn, kInstanceRows), "usage_hourly", seed);
  ExpectSameRows(pool, Rows(*conn, kPoolRows), "pool_usage_hourly", seed);
  ExpectSameRows(rated, Rows(*conn, kRatedRows), "usage_rated_hourly", seed);
  ExpectSameRows(Rows(*conn, kMonthlyKept), Rows(*conn, kMonthlyOfHours), "usage_rated_monthly after a refold", seed);
  testing::Test::RecordProperty("price_changes_" + std::to_string(seed), static_cast<int>(price_changes));
  testing::Test::RecordProperty("hours_marked_" + std::to_string(seed), static_cast<int>(marked));
}

}  // namespace

TEST(Fold, IncrementalEqualsAFullRefoldOverRandomHistories) {
  for (std::uint32_t seed : {1u, 2u, 3u, 4u, 5u}) {
    SCOPED_TRACE(seed);
    RunHistory(seed);
    if (HasFatalFailure()) return;
  }
}
