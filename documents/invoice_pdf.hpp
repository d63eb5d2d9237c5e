#pragma once
// An invoice as a PDF (docs/architecture.md, "Billing"): what finance archives and sends, rendered
// from the stored invoice alone with libharu and the PDF base fonts, so the same invoice gives the
// same bytes every time (no clock, no random identifiers; the document's date is its finalization).
// A draft says DRAFT across every page.
#include <string>

#include "billing/invoices.hpp"

namespace spillway::documents {

// The PDF's bytes. Text outside Windows-1252 (what the base fonts can show) is written as '?'.
std::string InvoicePdf(const billing::StoredInvoice& invoice);

}  // namespace spillway::documents
