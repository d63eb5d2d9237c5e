#pragma once
// Finance's audit of a period (`spillway-apiserver verify-invoices --period YYYY-MM`): every invoice
// of the month recomputed from stored usage and the price history, independently of the rollups the
// invoices were drafted from. What it reads: the stored samples (each attributed millisecond priced
// at the price in effect at its ts, looked up per sample), the judged unmetered hours when they are
// billed, the volumes and storage prices; what it compares them with: what finalized invoices billed
// of the month (invoice_usage) and what drafts bill of it now, line by line.
#include <cstdint>
#include <string>
#include <vector>

#include "core/db_fwd.hpp"

namespace spillway::billing {

struct AuditMismatch {
  std::string invoice_id;  // "" when no invoice bills it
  std::string tenant_id;
  std::string what;  // in words, with both figures
};

struct AuditReport {
  std::string period;
  int invoices = 0, lines = 0;       // checked
  std::int64_t stored_gpu_ms = 0;    // usage of the month recomputed from storage
  std::int64_t billed_gpu_ms = 0;    // of it, on finalized invoices and drafts
  std::vector<AuditMismatch> mismatches;
};

// Checks, for `period`:
// - each instance's stored usage at each price against what finalized invoices billed of it (never
//   more) plus what drafts bill now (the rest: the month's own draft, or the late-usage line of the
//   first open month after it), each draft line's GPU-hours and amount recomputed from that rest;
// - each finalized usage or late-usage line's GPU-hours and amount from the usage it billed;
// - each finalized invoice's storage lines from the volumes and the storage price history;
// - each invoice's subtotal, tax and total from its lines.
// `bill_unmetered`: billing.unmetered_held_time = bill (judged unmetered hours are billed usage).
AuditReport VerifyInvoices(Tx& tx, const std::string& period, bool bill_unmetered);

}  // namespace spillway::billing
