#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Invoices (docs/architecture.md, "Billing"). Members read their own; finance and admins every
// tenant's, close periods and issue credit notes.
Reply ListMyInvoices(Ctx& ctx);       // GET /v1/invoices: the member's, newest month (the draft) first
Reply GetInvoice(Ctx& ctx);           // GET /v1/invoices/{id}: JSON, or CSV with Accept: text/csv
Reply ListAllInvoices(Ctx& ctx);      // GET /v1/billing/invoices?period=&tenant_id=&status=
Reply ExportInvoicesCsv(Ctx& ctx);    // GET /v1/billing/invoices.csv?period=: one row per line
Reply ClosePeriodNow(Ctx& ctx);       // POST /v1/billing/periods/{period}/close
Reply ListClosedPeriods(Ctx& ctx);    // GET /v1/billing/periods
Reply CreateCreditNote(Ctx& ctx);     // POST /v1/billing/invoices/{id}/credit-notes
Reply GetBillingProfile(Ctx& ctx);    // GET /v1/tenants/{id}/billing-profile
Reply SetBillingProfile(Ctx& ctx);    // PUT /v1/tenants/{id}/billing-profile
Reply GetRevenueReport(Ctx& ctx);     // GET /v1/billing/reports/revenue?period=: JSON, or CSV
// The FOCUS 1.2 cost export (docs/focus.md), CSV: every tenant's (?tenant_id= narrows it), or the
// caller's own tenant's.
Reply ExportFocusAll(Ctx& ctx);       // GET /v1/billing/exports/focus?period=[&tenant_id=]
Reply ExportFocusOwn(Ctx& ctx);       // GET /v1/cost-export?period=

}  // namespace spillway::handlers
