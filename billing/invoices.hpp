#pragma once
// The invoice store (docs/architecture.md, "Billing"): drafts kept current from rated usage, the
// period close that finalizes them (gap-free numbers, a SHA-256 of the canonical JSON, written in one
// transaction), credit notes, billing profiles, and the reads the API serves.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "billing/funds.hpp"
#include "billing/invoice.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db_fwd.hpp"

namespace spillway::billing {

struct BillingSettings {
  Millis close_max_wait{std::chrono::hours(24)};  // billing.close_max_wait
  bool bill_unmetered_held_time = false;          // billing.unmetered_held_time = bill
  Party issuer;                                   // billing.issuer_*
  FundsSettings funds;                            // billing.low_balance_runway, min_launch_runway
  static BillingSettings From(const Config& config);
};

// A tenant's billing profile: the invoice's buyer and its tax rate.
struct BillingProfile {
  std::string tenant_id;
  Party party;
  int tax_rate_bp = 0;
  std::optional<TimeMs> updated_at;  // nullopt: never set (all empty, rate 0)
};
BillingProfile ProfileOf(Tx& tx, const std::string& tenant_id);
void SetProfile(Tx& tx, const BillingProfile& profile, TimeMs now);

struct CreditNote {
  std::string id, number, invoice_id, tenant_id, reason, created_by;
  std::int64_t subtotal_cents = 0, tax_cents = 0, total_cents = 0;
  TimeMs created_at{};
};

struct StoredInvoice {
  Invoice invoice;
  std::string sha256;  // of `canonical` (finalized); empty for a draft
  std::string canonical;
  std::vector<CreditNote> credit_notes;
  TimeMs created_at{}, updated_at{};
  std::int64_t credited_cents() const;  // Σ credit notes' totals
};

// What a draft refresh or a close changed of rated money, per market (for the billed counter).
using BilledDelta = std::map<std::string, std::int64_t>;  // market -> cents

// Brings the drafts of (tenants, period) up to date, from one aggregate of the month's rated usage:
// each created when something is billed, rewritten only when it changed, removed when nothing is
// left. Nothing once the month is closed.
BilledDelta RefreshDrafts(Tx& tx, const std::vector<std::string>& tenants, const std::string& period, TimeMs now,
                          const BillingSettings& settings);

// The leader's billing_drafts step: takes the tenant-months the metering fold marked (a mark of a
// closed month is late usage, billed on the tenant's next open draft) and refreshes the drafts of
// tenants holding volumes. Returns what changed per market; `drafted` counts drafts refreshed.
BilledDelta DraftInvoices(Session& conn, TimeMs now, const BillingSettings& settings, int* drafted = nullptr);

struct PeriodClose {
  std::string period;
  TimeMs closed_at{};
  bool incomplete = false;
  std::vector<std::string> hosts_behind;
  std::string closed_by;
  int invoices = 0;       // finalized by this close (0 when it was closed before)
  bool already = false;   // it was closed before: nothing was done
  BilledDelta billed;     // rated money the close added beyond the drafts
};

// The hosts that ran instances in `month` and have not reported (folded) past its end, and whether
// some of the month's usage is still to be folded.
struct CloseReadiness {
  std::vector<std::string> hosts_behind;
  bool folding = false;
  bool ready() const { return hosts_behind.empty() && !folding; }
};
CloseReadiness ReadinessOf(Tx& tx, const Month& month);

// Closes `month` in `tx`: finalizes every tenant's invoice for it in tenant order, each numbered
// from the one series, hashed and recorded, and writes the month into billing_periods_closed. A
// month already closed is a no-op (already = true). ApiError 409 when the month has not ended or an
// earlier month is still open. Serialized with drafting by an advisory lock.
PeriodClose ClosePeriod(Tx& tx, const Month& month, TimeMs now, const BillingSettings& settings,
                        const std::string& closed_by);
std::optional<PeriodClose> ClosedPeriod(Tx& tx, const std::string& period);
std::vector<PeriodClose> ClosedPeriods(Tx& tx);

// The months the leader should consider closing now, oldest first: ended and not closed.
std::vector<Month> PeriodsToClose(Tx& tx, TimeMs now);

// The first month Spillway could have billed: the earliest of the first instance's start, the first
// volume's creation and the month before this database was installed (the first the leader closes).
// Never after the month before `now`'s.
Month FirstBillableMonth(Tx& tx, TimeMs now);

// Whether `period` ("2026-11") is closed.
bool PeriodClosed(Tx& tx, const std::string& period);
// Up to where (an hour) the volume metering has measured every volume; `fallback` before its first hour.
TimeMs VolumeMeteredThrough(Tx& tx, TimeMs fallback);

// Reads.
std::optional<StoredInvoice> FindInvoice(Tx& tx, const std::string& id);
struct InvoiceQuery {
  std::string tenant_id, period, status;  // "" = any
  std::string after;                      // the page cursor: "period/id" of the last one seen
  int limit = 50;
};
// Newest period first, then id: members see the current draft first.
std::vector<StoredInvoice> ListInvoices(Tx& tx, const InvoiceQuery& q);

// A credit note of `amount_cents` (before tax) on a finalized invoice, numbered from the credit
// note series. ApiError 404 (no such invoice), 409 (a draft), 422 (more than remains).
CreditNote IssueCreditNote(Tx& tx, const std::string& invoice_id, std::int64_t amount_cents, const std::string& reason,
                           const std::string& created_by, TimeMs now);

// Counts of invoices per status (the spillway_invoices gauge) and the oldest billing mark's time.
struct BillingGauges {
  std::int64_t drafts = 0, finalized = 0;
  std::optional<TimeMs> oldest_mark;
};
BillingGauges ReadBillingGauges(Tx& tx);

}  // namespace spillway::billing
