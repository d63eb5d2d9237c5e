#include "billing/audit.hpp"

#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "billing/exact_amount.hpp"
#include "billing/invoice.hpp"
#include "billing/rating.hpp"
#include "billing/storage_sql.hpp"
#include "core/db.hpp"
#include "core/money.hpp"
#include "core/sql.hpp"

namespace spillway::billing {
namespace {

// The price in effect at `at` for row `r`'s market, region and model: the pool's spot history for
// spot, the on-demand book otherwise.
#define SPW_PRICE_AT(r, at)                                                                                  \
  "CASE WHEN " r ".market = 'spot' THEN (SELECT p.price_micros_per_gpu_hour FROM spot_prices p WHERE p.region = " \
  r ".region AND p.gpu_model = " r ".gpu_model AND p.effective_from <= " at                                      \
  " ORDER BY p.effective_from DESC LIMIT 1) ELSE (SELECT p.price_micros_per_gpu_hour FROM prices p WHERE "       \
  "p.gpu_model = " r ".gpu_model AND p.market = 'on_demand' AND p.effective_from <= " at                         \
  " ORDER BY p.effective_from DESC LIMIT 1) END"

// The month's stored usage, each attributed sample (ts in (begin, end]: the hour rule) priced at the
// price in effect at its ts, looked up for each sample on its own: the on-demand book's for
// on-demand instances, the pool's spot history for spot ones. Nothing here reads the rollups.
const Statement kStoredUsage{"audit_stored_usage", R"sql(
SELECT i.tenant_id, s.instance_id, i.market,
       )sql" SPW_PRICE_AT("i", "s.ts") R"sql( AS price,
       sum(s.interval_ms)::bigint AS gpu_ms
FROM usage_samples s JOIN instances i ON i.id = s.instance_id
WHERE s.ts > )sql" SPW_TS(1) " AND s.ts <= " SPW_TS(2) R"sql(
GROUP BY 1, 2, 3, 4)sql"};
// Held time no sample covered, as judged per instance-hour (billed only where the operator says
// so), at the price in effect at the hour's start.
const Statement kUnmeteredUsage{"audit_unmetered_usage", R"sql(
SELECT u.tenant_id, u.instance_id, u.market,
       )sql" SPW_PRICE_AT("u", "u.hour") R"sql( AS price,
       sum(u.held_gpu_ms - u.metered_gpu_ms)::bigint AS gpu_ms
FROM unmetered_hourly u
WHERE u.hour >= )sql" SPW_TS(1) " AND u.hour < " SPW_TS(2) R"sql( AND u.held_gpu_ms > u.metered_gpu_ms
GROUP BY 1, 2, 3, 4)sql"};
// What finalized invoices billed of the month, per invoice.
const Statement kFinalizedUsage{"audit_finalized_usage", R"sql(
SELECT u.invoice_id, u.tenant_id, u.instance_id, u.market, u.price_micros AS price, sum(u.gpu_ms)::bigint AS gpu_ms
FROM invoice_usage u JOIN invoices inv ON inv.id = u.invoice_id
WHERE u.usage_period = $1 AND inv.status = 'finalized'
GROUP BY 1, 2, 3, 4, 5)sql"};
// The lines that bill the month's usage: its own invoices' usage lines, and late-usage lines of it
// on later invoices.
const Statement kUsageLines{"audit_usage_lines", R"sql(
SELECT inv.id AS invoice_id, inv.tenant_id, inv.status, l.instance_id, l.quantity, l.amount_cents
FROM invoice_lines l JOIN invoices inv ON inv.id = l.invoice_id
WHERE (inv.period = $1 AND l.kind = 'usage') OR (l.kind = 'late_usage' AND l.usage_period = $1)
ORDER BY inv.id, l.position)sql"};
const Statement kInvoicesOf{"audit_invoices", R"sql(
SELECT id, tenant_id, status, subtotal_cents, tax_rate_bp, tax_cents, total_cents FROM invoices WHERE period = $1
ORDER BY id)sql"};
const Statement kLineSums{"audit_line_sums", R"sql(
SELECT l.invoice_id, sum(l.amount_cents) FILTER (WHERE l.kind <> 'tax')::bigint AS lines_cents
FROM invoice_lines l JOIN invoices inv ON inv.id = l.invoice_id WHERE inv.period = $1 GROUP BY l.invoice_id)sql"};
const Statement kStorageLines{"audit_storage_lines", R"sql(
SELECT l.invoice_id, l.volume_id, l.quantity, l.amount_cents
FROM invoice_lines l JOIN invoices inv ON inv.id = l.invoice_id
WHERE inv.period = $1 AND inv.status = 'finalized' AND l.kind = 'storage')sql"};
const Statement kStoredStorage{"audit_stored_storage",
                               "WITH " SPW_STORAGE_SPANS " SELECT v.tenant_id, v.id, v.name, v.size_gb, sp.price, sum(" SPW_STORAGE_GB_MS(1, 2)
                               ")::bigint AS gb_ms" SPW_STORAGE_FROM(1, 2) " GROUP BY v.tenant_id, v.id, v.name, v.size_gb, sp.price"};

using Key = std::tuple<std::string, std::string, std::int64_t>;  // instance, market, price (-1: none)
using ByTenant = std::map<std::string, std::map<Key, std::int64_t>>;

Key KeyOf(const pqxx::row& r) {
  return {r["instance_id"].as<std::string>(), r["market"].as<std::string>(), IntFrom(r["price"]).value_or(-1)};
}

struct Figures {
  std::string quantity;
  std::int64_t cents = 0;
};
// Per instance: its GPU-hours and amount as an invoice line shows them, from usage rows.
std::map<std::string, Figures> LinesOf(const std::map<Key, std::int64_t>& usage) {
  std::vector<RatedUsage> rows;
  for (const auto& [key, ms] : usage) {
    if (ms <= 0) continue;
    const auto& [instance, market, price] = key;
    rows.push_back({instance, market, TimeMs{}, ms, price < 0 ? std::nullopt : std::optional<std::int64_t>(price)});
  }
  std::map<std::string, Figures> out;
  for (const UsageLine& u : RateUsage(rows)) out[u.instance_id] = {FormatQuantity(u.micro_gpu_hours()), u.amount.Cents()};
  return out;
}

std::string Dollars(std::int64_t cents) { return "$" + FormatAmount(cents); }

std::string Show(const Figures& f) { return f.quantity + " GPU-hours, " + Dollars(f.cents); }

}  // namespace

AuditReport VerifyInvoices(Tx& tx, const std::string& period, bool bill_unmetered) {
  AuditReport report;
  report.period = period;
  const auto month = ParseMonth(period);
  if (!month) throw std::invalid_argument("period: expected YYYY-MM, got " + period);
  const std::int64_t from = EpochMs(month->begin), to = EpochMs(month->end);
  const auto mismatch = [&](std::string invoice, std::string tenant, std::string what) {
    report.mismatches.push_back({std::move(invoice), std::move(tenant), std::move(what)});
  };

  ByTenant stored, finalized;
  std::map<std::string, std::map<Key, std::int64_t>> by_invoice;  // finalized usage, per invoice
  std::map<std::string, std::string> tenant_of;
  for (const auto& r : tx.exec_prepared(kStoredUsage.name, from, to)) {
    stored[r["tenant_id"].as<std::string>()][KeyOf(r)] += r["gpu_ms"].as<std::int64_t>();
    report.stored_gpu_ms += r["gpu_ms"].as<std::int64_t>();
  }
  if (bill_unmetered)
    for (const auto& r : tx.exec_prepared(kUnmeteredUsage.name, from, to)) {
      stored[r["tenant_id"].as<std::string>()][KeyOf(r)] += r["gpu_ms"].as<std::int64_t>();
      report.stored_gpu_ms += r["gpu_ms"].as<std::int64_t>();
    }
  for (const auto& r : tx.exec_prepared(kFinalizedUsage.name, period)) {
    const std::string tenant = r["tenant_id"].as<std::string>(), invoice = r["invoice_id"].as<std::string>();
    finalized[tenant][KeyOf(r)] += r["gpu_ms"].as<std::int64_t>();
    by_invoice[invoice][KeyOf(r)] += r["gpu_ms"].as<std::int64_t>();
    tenant_of[invoice] = tenant;
    report.billed_gpu_ms += r["gpu_ms"].as<std::int64_t>();
  }

  // What is left to bill of each instance at each price once the finalized invoices are taken off:
  // never below zero (an invoice billed more than is stored).
  ByTenant rest;
  std::set<std::string> tenants;
  for (const auto& [t, m] : stored) tenants.insert(t);
  for (const auto& [t, m] : finalized) tenants.insert(t);
  for (const std::string& t : tenants) {
    std::map<Key, std::int64_t> left = stored[t];
    for (const auto& [key, ms] : finalized[t]) left[key] -= ms;
    for (const auto& [key, ms] : left) {
      const auto& [instance, market, price] = key;
      if (ms < 0)
        mismatch("", t,
                 instance + " (" + market + ", " + (price < 0 ? std::string("no price") : FormatMicros(price) + "/GPU-hour") +
                     "): finalized invoices bill " + std::to_string(-ms) + " GPU-ms more than is stored");
      else if (ms > 0)
        rest[t][key] = ms;
    }
  }

  // Each line that bills the month: a finalized one against the usage its invoice recorded, a draft
  // one against what is left.
  std::map<std::string, std::map<std::string, Figures>> drafted;  // tenant -> instance -> draft line
  std::map<std::string, std::string> draft_of;                    // tenant -> the draft that bills the rest
  std::map<std::string, std::map<std::string, Figures>> finalized_lines;  // invoice -> instance -> line
  for (const auto& r : tx.exec_prepared(kUsageLines.name, period)) {
    ++report.lines;
    const std::string invoice = r["invoice_id"].as<std::string>(), tenant = r["tenant_id"].as<std::string>();
    const std::string instance = r["instance_id"].is_null() ? "" : r["instance_id"].as<std::string>();
    Figures line{r["quantity"].as<std::string>(), r["amount_cents"].as<std::int64_t>()};
    if (r["status"].as<std::string>() == "finalized") {
      finalized_lines[invoice][instance] = line;
      tenant_of[invoice] = tenant;
    } else {
      drafted[tenant][instance] = line;
      draft_of[tenant] = invoice;
    }
  }
  for (const auto& [invoice, lines] : finalized_lines) {
    const auto expected = LinesOf(by_invoice[invoice]);
    for (const auto& [instance, line] : lines) {
      const auto e = expected.find(instance);
      if (e == expected.end())
        mismatch(invoice, tenant_of[invoice], instance + ": a line of " + Show(line) + " with no usage recorded for it");
      else if (e->second.quantity != line.quantity || e->second.cents != line.cents)
        mismatch(invoice, tenant_of[invoice],
                 instance + ": the line says " + Show(line) + "; the usage it billed gives " + Show(e->second));
    }
    for (const auto& [instance, e] : expected)
      if (!lines.count(instance))
        mismatch(invoice, tenant_of[invoice], instance + ": usage recorded as billed (" + Show(e) + ") with no line");
  }
  for (const std::string& t : tenants) {
    const auto expected = LinesOf(rest[t]);
    const auto& lines = drafted[t];
    const std::string invoice = draft_of.count(t) ? draft_of[t] : "";
    for (const auto& [instance, e] : expected) {
      const auto l = lines.find(instance);
      if (l == lines.end())
        mismatch(invoice, t, instance + ": stored usage of " + Show(e) + " that no invoice bills");
      else if (l->second.quantity != e.quantity || l->second.cents != e.cents)
        mismatch(invoice, t, instance + ": the draft says " + Show(l->second) + "; stored usage gives " + Show(e));
    }
    for (const auto& [instance, line] : lines)
      if (!expected.count(instance))
        mismatch(invoice, t, instance + ": the draft bills " + Show(line) + " and nothing of it is stored");
  }

  // Storage on finalized invoices: from the volumes and the storage price history, the whole month.
  std::map<std::string, std::vector<StorageUsage>> storage;
  for (const auto& r : tx.exec_prepared(kStoredStorage.name, from, to))
    storage[r["tenant_id"].as<std::string>()].push_back({r["id"].as<std::string>(), r["name"].as<std::string>(),
                                                         r["size_gb"].as<int>(), r["gb_ms"].as<std::int64_t>(),
                                                         r["price"].as<std::int64_t>()});
  std::map<std::string, std::map<std::string, Figures>> storage_lines;  // invoice -> volume -> line
  for (const auto& r : tx.exec_prepared(kStorageLines.name, period))
    storage_lines[r["invoice_id"].as<std::string>()][r["volume_id"].as<std::string>()] = {
        r["quantity"].as<std::string>(), r["amount_cents"].as<std::int64_t>()};

  std::map<std::string, std::int64_t> line_sums;
  for (const auto& r : tx.exec_prepared(kLineSums.name, period))
    line_sums[r["invoice_id"].as<std::string>()] = r["lines_cents"].is_null() ? 0 : r["lines_cents"].as<std::int64_t>();
  for (const auto& r : tx.exec_prepared(kInvoicesOf.name, period)) {
    ++report.invoices;
    const std::string invoice = r["id"].as<std::string>(), tenant = r["tenant_id"].as<std::string>();
    const std::int64_t subtotal = r["subtotal_cents"].as<std::int64_t>(), tax = r["tax_cents"].as<std::int64_t>(),
                       total = r["total_cents"].as<std::int64_t>();
    if (subtotal != line_sums[invoice])
      mismatch(invoice, tenant, "subtotal " + Dollars(subtotal) + ", its lines add up to " + Dollars(line_sums[invoice]));
    const std::int64_t expected_tax = TaxOf(subtotal, r["tax_rate_bp"].as<int>());
    if (tax != expected_tax) mismatch(invoice, tenant, "tax " + Dollars(tax) + ", expected " + Dollars(expected_tax));
    if (total != subtotal + tax)
      mismatch(invoice, tenant, "total " + Dollars(total) + " is not subtotal plus tax " + Dollars(subtotal + tax));
    if (r["status"].as<std::string>() != "finalized") continue;
    std::map<std::string, Figures> expected;
    for (const InvoiceLine& l : StorageLines(storage[tenant], DaysInMonth(period)))
      expected[*l.volume_id] = {l.quantity, l.amount_cents};
    const auto& lines = storage_lines[invoice];
    for (const auto& [volume, e] : expected) {
      const auto l = lines.find(volume);
      const std::string shown = e.quantity + " GB-months, " + Dollars(e.cents);
      if (l == lines.end()) mismatch(invoice, tenant, volume + ": stored volume of " + shown + " with no storage line");
      else if (l->second.quantity != e.quantity || l->second.cents != e.cents)
        mismatch(invoice, tenant, volume + ": the line says " + l->second.quantity + " GB-months, " +
                                      Dollars(l->second.cents) + "; the volume gives " + shown);
    }
    for (const auto& [volume, l] : lines)
      if (!expected.count(volume))
        mismatch(invoice, tenant, volume + ": a storage line of " + Dollars(l.cents) + " for no stored volume");
  }
  return report;
}

}  // namespace spillway::billing
