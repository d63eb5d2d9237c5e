// An invoice's rules without a database (billing/invoice): lines from rated usage and storage, tax
// rounded once on the subtotal, credit notes that give back exactly the total, the canonical JSON.
#include <gtest/gtest.h>

#include <random>

#include "billing/invoice.hpp"
#include "core/crypto.hpp"

using namespace spillway;
using namespace spillway::billing;

namespace {
TimeMs T(const char* s) { return *ParseTime(s); }
}  // namespace

TEST(Invoice, TaxIsRoundedHalfEvenOnceOnTheSubtotal) {
  EXPECT_EQ(TaxOf(27916, 2000), 5583);  // 5583.2
  EXPECT_EQ(TaxOf(250, 1000), 25);
  EXPECT_EQ(TaxOf(125, 2000), 25);      // exactly 25
  EXPECT_EQ(TaxOf(5, 1000), 0);         // 0.5: to even, 0
  EXPECT_EQ(TaxOf(15, 1000), 2);        // 1.5: to even, 2
  EXPECT_EQ(TaxOf(374, 825), 31);       // 30.855
  EXPECT_EQ(TaxOf(123, 0), 0);
  EXPECT_EQ(TaxOf(123, 10000), 123);
}

TEST(Invoice, TheTotalIsTheLinesPlusOneTaxLine) {
  Invoice inv;
  inv.tax_rate_bp = 2000;
  for (std::int64_t c : {6833, 6833, 5750, 8500}) {
    InvoiceLine l;
    l.kind = "usage";
    l.amount_cents = c;
    inv.lines.push_back(l);
  }
  Total(inv);
  Total(inv);  // again: still one tax line
  ASSERT_EQ(inv.lines.size(), 5u);
  EXPECT_EQ(inv.lines.back().kind, "tax");
  EXPECT_EQ(inv.lines.back().quantity, "20.00");
  EXPECT_EQ(inv.subtotal_cents, 27916);
  EXPECT_EQ(inv.tax_cents, 5583);
  EXPECT_EQ(inv.total_cents, 33499);
  EXPECT_FALSE(inv.Empty());
  Invoice none;
  Total(none);
  EXPECT_TRUE(none.Empty());
  EXPECT_EQ(none.total_cents, 0);
}

TEST(Invoice, CreditNotesAddingUpToTheSubtotalGiveBackExactlyTheTaxAndTotal) {
  // lago-api #2643: per-charge credit notes on 68.33 + 68.33 + 57.50 + 85.00 at 20 %.
  std::int64_t credited = 0, tax = 0, total = 0;
  std::vector<std::int64_t> totals;
  for (std::int64_t amount : {6833, 5750, 8500, 6833}) {
    const auto s = SplitCredit(27916, 2000, credited, tax, amount);
    ASSERT_TRUE(s);
    credited += s->subtotal_cents;
    tax += s->tax_cents;
    total += s->total_cents();
    totals.push_back(s->total_cents());
  }
  EXPECT_EQ(totals, (std::vector<std::int64_t>{8200, 6900, 10200, 8199}));
  EXPECT_EQ(tax, 5583);
  EXPECT_EQ(total, 33499);
  EXPECT_FALSE(SplitCredit(27916, 2000, credited, tax, 1));   // nothing remains
  EXPECT_FALSE(SplitCredit(27916, 2000, 0, 0, 27917));        // more than the invoice
  EXPECT_FALSE(SplitCredit(27916, 2000, 0, 0, 0));
  EXPECT_FALSE(SplitCredit(27916, 2000, 0, 0, -5));
}

TEST(Invoice, AnySplitOfAnyInvoiceIntoCreditNotesGivesBackExactlyItsTotal) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 20'000; ++round) {
    const std::int64_t subtotal = 1 + static_cast<std::int64_t>(rng() % 10'000'000);
    const int rate = static_cast<int>(rng() % 10'001);
    const std::int64_t invoice_total = subtotal + TaxOf(subtotal, rate);
    std::int64_t credited = 0, tax = 0, total = 0;
    while (credited < subtotal) {
      const std::int64_t left = subtotal - credited;
      const std::int64_t amount = rng() % 3 == 0 ? left : 1 + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(left));
      const auto s = SplitCredit(subtotal, rate, credited, tax, amount);
      ASSERT_TRUE(s);
      ASSERT_GE(s->tax_cents, 0);
      credited += s->subtotal_cents;
      tax += s->tax_cents;
      total += s->total_cents();
      ASSERT_LE(total, invoice_total);
    }
    ASSERT_EQ(total, invoice_total) << subtotal << " at " << rate;
  }
}

TEST(Invoice, UsageLinesShowGpuHoursTheAveragePriceAndTheExactAmount) {
  const std::vector<RatedUsage> rows = {{"ins_b", "spot", T("2026-11-30T22:00:00Z"), 1'800'000, 1'000'000},
                                        {"ins_a", "on_demand", T("2026-11-30T22:00:00Z"), 5'390'500, 2'490'000},
                                        {"ins_a", "on_demand", T("2026-11-30T23:00:00Z"), 1'810'000, 3'000'000},
                                        {"ins_b", "spot", T("2026-11-30T22:00:00Z"), 1'000, std::nullopt}};
  const auto lines = UsageLines(rows, {{"ins_a", "H100-80GB", "h100.1x", std::string("train")}}, std::nullopt);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].kind, "usage");
  EXPECT_EQ(lines[0].description, "h100.1x (H100-80GB) ins_a \"train\", on-demand");
  EXPECT_EQ(lines[0].quantity, "2.000139");
  EXPECT_EQ(lines[0].unit, "gpu_hour");
  EXPECT_EQ(lines[0].amount_cents, 524);  // $5.2367625
  EXPECT_EQ(lines[0].unit_price_micros, 2'618'199);  // 18,852,345,000,000 / 7,200,500 = 2,618,199.4
  EXPECT_EQ(lines[1].market, "spot");
  EXPECT_EQ(lines[1].amount_cents, 50);
  EXPECT_NE(lines[1].description.find("0.000278 GPU-hours had no price"), std::string::npos);
  const auto late = UsageLines(rows, {}, std::string("2026-11"));
  EXPECT_EQ(late[0].kind, "late_usage");
  EXPECT_EQ(late[0].usage_period, "2026-11");
  EXPECT_EQ(late[0].description.rfind("usage from 2026-11: ins_a", 0), 0u);
}

TEST(Invoice, StorageIsPerGbMonthOfTheMonthsOwnDays) {
  // 10 GB for a whole 28-day February and for a whole 31-day March: one GB-month each, $1.00 at $0.10.
  for (const auto& [days, period] : {std::pair{28, "2027-02"}, std::pair{31, "2027-03"}, std::pair{30, "2026-11"}}) {
    EXPECT_EQ(DaysInMonth(period), days);
    const auto lines = StorageLines({{"vol_a", "data", 10, 10LL * days * 86'400'000, 100'000}}, days);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0].quantity, "10.000000");
    EXPECT_EQ(lines[0].amount_cents, 100);
    EXPECT_EQ(lines[0].unit_price_micros, 100'000);
  }
  EXPECT_EQ(DaysInMonth("2028-02"), 29);
}

TEST(Invoice, TheCanonicalJsonIsStableAndSaysEverything) {
  Invoice inv;
  inv.id = "inv_1";
  inv.tenant_id = "ten_1";
  inv.period = "2026-11";
  inv.status = "finalized";
  inv.number = "SPW-000042";
  inv.tax_rate_bp = 825;
  InvoiceLine l;
  l.kind = "usage";
  l.description = "h100.1x \"ü\"";
  l.instance_id = "ins_1";
  l.market = "on_demand";
  l.quantity = "1.000000";
  l.unit = "gpu_hour";
  l.unit_price_micros = 2'490'000;
  l.amount_cents = 249;
  inv.lines.push_back(l);
  Total(inv);
  inv.finalized_at = T("2026-12-01T00:05:00Z");
  inv.buyer = {"Buyer Inc", "2 Road", "US-1", "ap@buyer.example"};
  const std::string a = CanonicalInvoiceJson(inv);
  EXPECT_EQ(a, CanonicalInvoiceJson(inv));
  for (const char* part : {"\"number\":\"SPW-000042\"", "\"total\":\"2.70\"", "\"tax\":\"0.21\"", "\"unit_price\":\"2.490000\"",
                           "\"tax_rate_percent\":\"8.25\"", "\"finalized_at\":\"2026-12-01T00:05:00.000Z\""})
    EXPECT_NE(a.find(part), std::string::npos) << part << " in " << a;
  // Members in key order: "buyer" before "closed_incomplete" before "coverage" ...
  EXPECT_LT(a.find("\"buyer\""), a.find("\"closed_incomplete\""));
  EXPECT_LT(a.find("\"closed_incomplete\""), a.find("\"coverage\""));
  inv.lines[0].amount_cents = 250;
  Total(inv);
  EXPECT_NE(Sha256Hex(CanonicalInvoiceJson(inv)), Sha256Hex(a));
}

TEST(Invoice, CoverageAndQuantitiesAreDecimalStrings) {
  EXPECT_EQ(CoverageText(9981, 10000), "0.9981");
  EXPECT_EQ(CoverageText(10000, 10000), "1.0000");
  EXPECT_EQ(CoverageText(1, 3), "0.3333");
  EXPECT_FALSE(CoverageText(5, 0));
  EXPECT_EQ(FormatQuantity(1'500'000), "1.500000");
  EXPECT_EQ(FormatQuantity(7), "0.000007");
  EXPECT_EQ(FormatRate(825), "8.25");
}
