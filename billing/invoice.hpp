#pragma once
// What an invoice says, and the rules that make it (docs/architecture.md, "Billing"), pure: its lines
// from rated usage, storage and late usage; its subtotal, tax and total; the canonical JSON its
// SHA-256 is taken of; and how a credit note splits into amount and tax. Every amount is cents
// rounded half-even once, from the exact value (billing/exact_amount).
#include <boost/json/object.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "billing/rating.hpp"
#include "core/clock.hpp"

namespace spillway::billing {

// The buyer (a tenant's billing profile) or the issuer (the operator, from the config).
struct Party {
  std::string legal_name, address, tax_id, email;
};

struct InvoiceLine {
  std::string kind;  // usage | storage | late_usage | tax
  std::string description;
  std::optional<std::string> instance_id, volume_id, market, usage_period;
  std::string quantity;  // "12.500000" GPU-hours or GB-months; tax: the rate in percent ("20.00")
  std::string unit;      // gpu_hour | gb_month | percent
  std::optional<std::int64_t> unit_price_micros;  // the average price per unit (none for tax)
  std::int64_t amount_cents = 0;
};

struct Invoice {
  std::string id, tenant_id, period;
  std::string status = "draft";  // draft | finalized
  std::optional<std::string> number;
  std::string currency = "USD";
  std::vector<InvoiceLine> lines;  // usage, storage, late usage, then the tax line (always present)
  std::int64_t subtotal_cents = 0, tax_cents = 0, total_cents = 0;
  int tax_rate_bp = 0;
  std::optional<TimeMs> usage_complete_through;
  std::optional<std::string> coverage;  // "0.9981"
  bool closed_incomplete = false;
  std::vector<std::string> hosts_behind;
  Party buyer, issuer;
  std::optional<TimeMs> finalized_at;
  // True when there is nothing to bill: no usage, storage or late usage line.
  bool Empty() const;
};

// A line's quantity: micro-units (GPU-hours, GB-months ×10^6) with six decimals: 1500000 -> "1.500000".
std::string FormatQuantity(std::int64_t micro_units);
// GPU-milliseconds as GPU-hours with six decimals, rounded half-even: 5400000 -> "1.500000".
std::string FormatGpuHours(std::int64_t gpu_ms);
// A quantity of milliseconds (GB-ms, say) in units of `unit_ms` (a month's milliseconds: GB-months),
// with six decimals, rounded half-even.
std::string FormatInUnits(std::int64_t quantity_ms, std::int64_t unit_ms);
// A party as JSON: {legal_name, address, tax_id, email}.
boost::json::object PartyJson(const Party& party);
// Basis points as a percentage with two decimals: 2000 -> "20.00".
std::string FormatRate(int basis_points);
// The tax on `subtotal_cents` at `basis_points`, rounded half-even once.
std::int64_t TaxOf(std::int64_t subtotal_cents, int basis_points);

// Usage lines, one per instance, from its rated rows (the month's, or a closed month's not yet
// billed for late usage), each described by `describe(instance_id)`.
struct InstanceFacts {
  std::string instance_id, gpu_model, instance_type;
  std::optional<std::string> name;
};
std::vector<InvoiceLine> UsageLines(const std::vector<RatedUsage>& rows, const std::vector<InstanceFacts>& facts,
                                    const std::optional<std::string>& late_from);

// A volume's GB-milliseconds at one storage price (per GB-month) within one month of `month_days`.
struct StorageUsage {
  std::string volume_id, name;
  int size_gb = 0;
  std::int64_t gb_ms = 0;
  std::int64_t price_micros = 0;
};
std::vector<InvoiceLine> StorageLines(const std::vector<StorageUsage>& rows, int month_days);

// Adds the tax line and the totals: subtotal = Σ lines, tax on it, total = subtotal + tax.
void Total(Invoice& invoice);

// The canonical JSON of everything a finalized invoice says (members sorted by key, no white
// space, money as decimal strings): the text its SHA-256 is of.
std::string CanonicalInvoiceJson(const Invoice& invoice);

// A credit note of `amount_cents` before tax on an invoice with `subtotal_cents` at `tax_rate_bp`
// that `credited_cents` (before tax) and `credited_tax_cents` were already credited: its tax is
// the tax of everything credited so far, this included, less the tax already credited, so that
// credit notes adding up to the whole subtotal give back exactly the invoice's tax and total.
// nullopt when the amount is more than what remains.
struct CreditSplit {
  std::int64_t subtotal_cents = 0, tax_cents = 0;
  std::int64_t total_cents() const { return subtotal_cents + tax_cents; }
};
std::optional<CreditSplit> SplitCredit(std::int64_t subtotal_cents, int tax_rate_bp, std::int64_t credited_cents,
                                       std::int64_t credited_tax_cents, std::int64_t amount_cents);

// metered / held as a ratio with four decimals, rounded down ("0.9981"); nullopt when held is 0.
std::optional<std::string> CoverageText(std::int64_t metered_ms, std::int64_t held_ms);

// The number of days of the month `period` ("2026-02" -> 28).
int DaysInMonth(const std::string& period);

}  // namespace spillway::billing
