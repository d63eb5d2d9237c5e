// The FOCUS export's arithmetic (billing/focus): shares that add up to the cent, the hours an invoice
// billed, exact decimals, and an export of a made-up invoice checked against FOCUS's rules.
#include <gtest/gtest.h>

#include <random>

#include "billing/focus.hpp"
#include "tests/support/focus_check.hpp"

using namespace spillway;
using namespace spillway::billing;
using spillway::test::BilledCentsByInvoice;
using spillway::test::FocusViolations;
using spillway::test::ParseFocus;

namespace {

TimeMs At(const std::string& iso) { return *ParseTime(iso); }

std::int64_t Sum(const std::vector<std::int64_t>& v) {
  std::int64_t s = 0;
  for (auto x : v) s += x;
  return s;
}

}  // namespace

TEST(Apportion, SharesAddUpToTheTotalByLargestRemainder) {
  EXPECT_EQ(Apportion(100, {1, 1, 1}), (std::vector<std::int64_t>{34, 33, 33}));
  EXPECT_EQ(Apportion(-100, {1, 1, 1}), (std::vector<std::int64_t>{-34, -33, -33}));
  EXPECT_EQ(Apportion(10, {1, 3}), (std::vector<std::int64_t>{3, 7}));  // 2.5 and 7.5: the earlier gets the cent
  EXPECT_EQ(Apportion(5, {0, 0}), (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(Apportion(7, {0, 5}), (std::vector<std::int64_t>{0, 7}));
  EXPECT_TRUE(Apportion(7, {}).empty());
  std::mt19937_64 rng(20);
  for (int i = 0; i < 2000; ++i) {
    std::vector<Int128> w(1 + rng() % 40);
    Int128 sum = 0;
    for (auto& x : w) sum += x = static_cast<Int128>(rng() % 3'000'000'000ULL) * static_cast<Int128>(rng() % 100'000'000);
    const std::int64_t total = static_cast<std::int64_t>(rng() % 10'000'000'000ULL) - 5'000'000'000LL;
    const auto shares = Apportion(total, w);
    ASSERT_EQ(Sum(shares), total);
    for (std::size_t k = 0; k < w.size() && sum > 0; ++k) {  // each within a cent of its exact share
      const Int128 exact = static_cast<Int128>(total) * w[k];
      const Int128 diff = static_cast<Int128>(shares[k]) * sum - exact;
      ASSERT_LT(diff < 0 ? -diff : diff, sum);
    }
  }
}

TEST(TakeHours, EachInvoiceTakesTheHoursAfterThoseBilledBefore) {
  const std::vector<HourlyRated> rated = {
      {"ins_a", "on_demand", At("2026-11-01T00:00:00Z"), 2'000'000, 2'000'000, 3'600'000},
      {"ins_a", "on_demand", At("2026-11-01T01:00:00Z"), 2'000'000, 2'000'000, 3'600'000},
      {"ins_a", "on_demand", At("2026-11-01T02:00:00Z"), 3'000'000, 3'000'000, 1'000'000},
  };
  const PriceKey two{"on_demand", 2'000'000}, three{"on_demand", 3'000'000};
  // The month's invoice billed 5,000,000 ms at $2 and nothing at $3 (it arrived late).
  auto first = TakeHours(rated, {}, std::map<PriceKey, std::int64_t>{{two, 5'000'000}});
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].gpu_ms, 3'600'000);
  EXPECT_EQ(first[1].gpu_ms, 1'400'000);
  // Late usage: what follows.
  auto late = TakeHours(rated, {{two, 5'000'000}}, std::map<PriceKey, std::int64_t>{{two, 2'200'000}, {three, 1'000'000}});
  ASSERT_EQ(late.size(), 2u);
  EXPECT_EQ(late[0].hour, At("2026-11-01T01:00:00Z"));
  EXPECT_EQ(late[0].gpu_ms, 2'200'000);
  EXPECT_EQ(late[1].price_micros, 3'000'000);
  // A draft: everything not billed yet.
  auto rest = TakeHours(rated, {{two, 7'200'000}}, std::nullopt);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].gpu_ms, 1'000'000);
}

TEST(FormatPico, WritesExactDecimals) {
  EXPECT_EQ(FormatPico(3'086'417'500'000), "3.0864175");
  EXPECT_EQ(FormatPico(-50'000'000'000), "-0.05");
  EXPECT_EQ(FormatPico(0), "0");
  EXPECT_EQ(FormatPico(static_cast<Int128>(12) * 1'000'000'000'000), "12");
  EXPECT_EQ(FormatPico(1), "0.000000000001");
}

// An invoice with on-demand and spot usage at changing prices, a volume across a storage price change,
// late usage of the month before and 8.25 % tax; then a credit note on it.
TEST(FocusExport, AnInvoiceFollowsFocusRulesAndAddsUpToItsTotal) {
  const Month nov = *ParseMonth("2026-11");
  std::vector<RatedUsage> rated_rows;
  FocusExport::HoursOf hours;
  std::mt19937_64 rng(7);
  for (int h = 0; h < 30; ++h) {
    const TimeMs hour = nov.begin + std::chrono::hours(5 + h);
    const std::int64_t spot_price = 900'000 + static_cast<std::int64_t>(rng() % 400'000);
    const std::int64_t od_ms = 1 + static_cast<std::int64_t>(rng() % 7'200'000), spot_ms = 1 + static_cast<std::int64_t>(rng() % 3'600'000);
    rated_rows.push_back({"ins_od", "on_demand", hour, od_ms, 2'490'000});
    rated_rows.push_back({"ins_spot", "spot", hour, spot_ms, spot_price});
    hours[{"2026-11", "ins_od", "on_demand"}].push_back({"ins_od", "on_demand", hour, 2'490'000, 2'490'000, od_ms});
    hours[{"2026-11", "ins_spot", "spot"}].push_back({"ins_spot", "spot", hour, spot_price, 2'490'000, spot_ms});
  }
  const std::vector<InstanceFacts> facts = {{"ins_od", "H100-80GB", "h100.2x", "train"}, {"ins_spot", "H100-80GB", "h100.1x", std::nullopt}};
  StoredInvoice s;
  Invoice& inv = s.invoice;
  inv.id = "inv_1";
  inv.tenant_id = "ten_1";
  inv.period = "2026-11";
  inv.status = "finalized";
  inv.number = "SPW-000007";
  inv.tax_rate_bp = 825;
  inv.lines = UsageLines(rated_rows, facts, std::nullopt);
  // A 10 GB volume from the 3rd 10:30 to the 20th at $0.10 a GB-month, $0.12 from the 10th.
  const std::vector<VolumeSpan> volumes = {
      {"vol_1", "data", "eu-west", 10, 100'000, At("2026-11-03T10:30:00Z"), At("2026-11-10T00:00:00Z")},
      {"vol_1", "data", "eu-west", 10, 120'000, At("2026-11-10T00:00:00Z"), At("2026-11-20T00:00:00Z")}};
  std::vector<StorageUsage> storage;
  for (const auto& v : volumes) storage.push_back({v.volume_id, v.name, v.size_gb, v.size_gb * (v.to - v.from).count(), v.price_micros});
  for (auto& l : StorageLines(storage, 30)) inv.lines.push_back(l);
  // Late usage from October: 90 minutes at $2.49 on the 31st.
  const std::vector<RatedUsage> late = {{"ins_od", "on_demand", At("2026-10-31T22:00:00Z"), 5'400'000, 2'490'000}};
  for (auto& l : UsageLines(late, facts, std::string("2026-10"))) inv.lines.push_back(l);
  hours[{"2026-10", "ins_od", "on_demand"}] = {
      {"ins_od", "on_demand", At("2026-10-31T22:00:00Z"), 2'490'000, 2'490'000, 3'600'000},
      {"ins_od", "on_demand", At("2026-10-31T23:00:00Z"), 2'490'000, 2'490'000, 1'800'000}};
  Total(inv);
  const std::map<std::string, InstanceSku> skus = {
      {"ins_od", {"ins_od", "eu-west", "H100-80GB", "h100.2x", "train"}},
      {"ins_spot", {"ins_spot", "eu-north", "H100-80GB", "h100.1x", std::nullopt}}};

  FocusExport e(nov, "Spare GPU Co");
  e.AddInvoice(s, {"ten_1", "=acme"}, hours, volumes, skus);
  const CreditNote note{"cn_1", "SPW-CN-000001", "inv_1", "ten_1", "SLA", "key:k", 150, 12, 162, At("2026-11-30T00:00:00Z")};
  e.AddCreditNote(note, inv, {"ten_1", "=acme"});
  const std::string csv = e.Csv();
  const auto focus = ParseFocus(csv);
  const auto violations = FocusViolations(focus);
  EXPECT_TRUE(violations.empty()) << violations.front();
  const auto billed = BilledCentsByInvoice(focus);
  EXPECT_EQ(billed.at("inv_1"), inv.total_cents);
  EXPECT_EQ(billed.at("cn_1"), -162);
  // 30 hours of each instance, the volume's hours, the two late hours, tax, credit and its tax.
  std::map<std::string, int> kinds;
  for (const auto& r : focus.rows) ++kinds[r.at("ChargeCategory") + "/" + r.at("ChargeClass") + "/" + r.at("ServiceName")];
  EXPECT_EQ(kinds["Usage//GPU Instances"], 60);
  EXPECT_EQ(kinds["Usage/Correction/GPU Instances"], 2);
  EXPECT_EQ(kinds["Usage//Volumes"], 16 * 24 + 14);  // the 3rd 10:30 (10:00's hour on) to the 20th
  EXPECT_EQ(kinds["Tax//GPU Cloud"], 1);
  EXPECT_EQ(kinds["Credit/Correction/GPU Cloud"], 1);
  EXPECT_EQ(kinds["Tax/Correction/GPU Cloud"], 1);
  // Each line's hours add up to the line; spot is Dynamic under the same SKU as on-demand.
  std::map<std::string, std::int64_t> per_resource;
  for (const auto& r : focus.rows)
    if (r.at("ChargeCategory") == "Usage") per_resource[r.at("ResourceId") + r.at("ChargeClass")] += test::CentsOf(r.at("BilledCost"));
  EXPECT_EQ(per_resource["ins_spot"], inv.lines[1].amount_cents);
  EXPECT_EQ(per_resource["vol_1"], inv.lines[2].amount_cents);
  EXPECT_EQ(per_resource["ins_odCorrection"], inv.lines[3].amount_cents);
  for (const auto& r : focus.rows)
    if (r.at("ResourceId") == "ins_spot") {
      EXPECT_EQ(r.at("PricingCategory"), "Dynamic");
      EXPECT_EQ(r.at("SkuId"), "gpu-hour:H100-80GB");
      EXPECT_EQ(r.at("ListUnitPrice"), "2.490000");
      EXPECT_EQ(r.at("RegionId"), "eu-north");
      EXPECT_EQ(r.at("ResourceName"), "ins_spot");
    }
  // The rules are not blind: a ListCost off by a millionth, a Tax row with a quantity, a usage row
  // without its SKU, a period inside out, each is caught.
  for (const auto& [column, value] : std::vector<std::pair<std::string, std::string>>{
           {"ListCost", "0.000001"}, {"SkuId", ""}, {"ChargePeriodEnd", "2026-11-01T00:00:00Z"},
           {"ChargeCategory", "Fee"}, {"BilledCost", "1,00"}}) {
    auto broken = focus;
    broken.rows[0][column] = value;
    EXPECT_FALSE(FocusViolations(broken).empty()) << column << " = " << value;
  }
  auto taxed = focus;
  for (auto& r : taxed.rows)
    if (r.at("ChargeCategory") == "Tax") r["PricingQuantity"] = "1", r["PricingUnit"] = "GPU-Hours";
  EXPECT_FALSE(FocusViolations(taxed).empty());
  // A name a spreadsheet would run is quoted as text.
  EXPECT_NE(csv.find(",'=acme,"), std::string::npos);
}
