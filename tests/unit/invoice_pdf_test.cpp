// The invoice PDF (documents/invoice_pdf): the same bytes for the same invoice, whenever rendered;
// long invoices run onto more pages; text the base fonts cannot show does not break it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <thread>

#include "documents/invoice_pdf.hpp"

using namespace spillway;
using namespace spillway::billing;

namespace {

StoredInvoice Sample(int lines, const std::string& status) {
  StoredInvoice s;
  Invoice& i = s.invoice;
  i.id = "inv_pdf";
  i.tenant_id = "ten_pdf";
  i.period = "2026-11";
  i.status = status;
  if (status == "finalized") {
    i.number = "SPW-000042";
    i.finalized_at = *ParseTime("2026-12-01T00:10:00Z");
    s.sha256 = std::string(64, 'a');
  }
  i.tax_rate_bp = 2000;
  i.buyer = {"Åcme Ünïcode Ltd — 研究", "1 Main St\nLondon", "GB999", "ap@acme.example"};
  i.issuer = {"Spare GPU Co", "2 Dock Rd", "EU-123", "billing@spare.example"};
  i.usage_complete_through = *ParseTime("2026-12-01T00:00:00Z");
  i.coverage = "0.9990";
  for (int n = 0; n < lines; ++n) {
    InvoiceLine l;
    l.kind = "usage";
    l.description = "h100.8x (H100-80GB) ins_" + std::to_string(n) + " \"a rather long instance name that has to wrap " +
                    "onto a second line of the description column\", on-demand";
    l.quantity = "12.500000";
    l.unit = "gpu_hour";
    l.unit_price_micros = 2'490'000;
    l.amount_cents = 3113 + n;
    i.lines.push_back(l);
  }
  Total(i);
  s.updated_at = s.created_at = *ParseTime("2026-11-30T23:00:00Z");
  return s;
}

int Pages(const std::string& pdf) {
  std::smatch m;
  const std::regex count(R"(/Type /Pages[^>]*/Count (\d+))");
  if (!std::regex_search(pdf, m, count)) return -1;
  return std::stoi(m[1]);
}

}  // namespace

TEST(InvoicePdf, TheSameInvoiceGivesTheSameBytesWheneverItIsRendered) {
  const auto s = Sample(3, "finalized");
  const std::string first = documents::InvoicePdf(s);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // a clock in the document would show
  EXPECT_EQ(documents::InvoicePdf(s), first);
  EXPECT_EQ(first.rfind("%PDF-", 0), 0u);
  EXPECT_NE(first.find("%%EOF"), std::string::npos);
  EXPECT_EQ(Pages(first), 1);
  // Another invoice is another document.
  auto other = s;
  other.invoice.lines[0].amount_cents += 1;
  Total(other.invoice);
  EXPECT_NE(documents::InvoicePdf(other), first);
}

TEST(InvoicePdf, ALongInvoiceRunsOntoMorePages) {
  const std::string pdf = documents::InvoicePdf(Sample(150, "draft"));
  EXPECT_GE(Pages(pdf), 5);
}
