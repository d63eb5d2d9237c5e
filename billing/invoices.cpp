#include "billing/invoices.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <set>

#include "billing/storage_sql.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/sql.hpp"
#include "webhooks/webhooks.hpp"

namespace spillway::billing {
namespace {

// Drafting takes it shared, a close exclusively: a draft is never written for a month being closed.
constexpr std::int64_t kBillingLock = 7308324466018009711LL;

const Statement kLockShared{"billing_lock_shared", "SELECT pg_advisory_xact_lock_shared($1::bigint)"};
const Statement kLockExclusive{"billing_lock_exclusive", "SELECT pg_advisory_xact_lock($1::bigint)"};

// A month's rated GPU-ms per tenant, instance and price, for a few tenants or for every tenant:
// the month's sums as the rated hours' triggers keep them (usage_rated_monthly), one row per
// instance and price whatever the day of the month.
const Statement kRatedRowsOf{"billing_rated_rows_of", R"sql(
SELECT tenant_id, instance_id, market, price_micros_per_gpu_hour AS price, unmetered, gpu_ms
FROM usage_rated_monthly
WHERE tenant_id = ANY($1::text[]) AND period = $2 AND gpu_ms <> 0)sql"};
const Statement kRatedRowsAll{"billing_rated_rows_all", R"sql(
SELECT tenant_id, instance_id, market, price_micros_per_gpu_hour AS price, unmetered, gpu_ms
FROM usage_rated_monthly
WHERE period = $1 AND gpu_ms <> 0)sql"};
const Statement kInvoiced{"billing_invoiced_usage", R"sql(
SELECT instance_id, market, price_micros AS price, sum(gpu_ms)::bigint AS gpu_ms
FROM invoice_usage WHERE tenant_id = $1 AND usage_period = $2
GROUP BY instance_id, market, price_micros)sql"};
const Statement kInstanceFacts{"billing_instance_facts",
                               "SELECT id, gpu_model, instance_type, name FROM instances WHERE id = ANY($1::text[])"};
// Each volume's GB-ms in [$2, $3) at each storage price in effect (a price applies from its
// effective_from, inclusive, to the next one's).
const Statement kStorage{"billing_storage",
                         "WITH " SPW_STORAGE_SPANS " SELECT v.id, v.name, v.size_gb, sp.price, sum(" SPW_STORAGE_GB_MS(2, 3)
                         ")::bigint AS gb_ms" SPW_STORAGE_FROM(2, 3)
                         " AND v.tenant_id = $1 GROUP BY v.id, v.name, v.size_gb, sp.price ORDER BY v.id"};
const Statement kVolumeMetered{"billing_volume_metered",
                               "SELECT " SPW_EPOCH_MS("metered_through") " AS through_ms FROM volume_metering"};
// The hosts that ran instances ($1: one tenant's, '' for all) in [$2, $3), and how far each has
// been folded: the month is complete once each is folded past its end ($3).
const Statement kHostsOf{"billing_hosts_of", R"sql(
SELECT DISTINCT i.host_id, )sql" SPW_EPOCH_MS("w.folded_through") R"sql( AS through_ms, $3::bigint AS needed_ms
FROM instances i LEFT JOIN host_watermarks w ON w.host_id = i.host_id
WHERE ($1 = '' OR i.tenant_id = $1) AND i.host_id IS NOT NULL AND i.started_at IS NOT NULL
  AND i.started_at < )sql" SPW_TS(3) " AND (i.ended_at IS NULL OR i.ended_at > " SPW_TS(2) R"sql()
ORDER BY i.host_id)sql"};
// GPU time the tenant's instances held in [$2, $3), each hold up to its host's folded watermark.
const Statement kHeld{"billing_held", R"sql(
SELECT coalesce(sum(greatest(0,
         least()sql" SPW_EPOCH_MS("coalesce(h.released_at, now())") R"sql(, $3::bigint,
               coalesce()sql" SPW_EPOCH_MS("w.folded_through") R"sql(, $2::bigint))
         - greatest()sql" SPW_EPOCH_MS("h.allocated_at") R"sql(, $2::bigint))), 0)::bigint AS held_ms
FROM gpu_allocation_history h JOIN instances i ON i.id = h.instance_id
LEFT JOIN host_watermarks w ON w.host_id = h.host_id
WHERE i.tenant_id = $1 AND h.allocated_at < )sql" SPW_TS(3) " AND (h.released_at IS NULL OR h.released_at > " SPW_TS(2) ")"};
// Usage of [$1, $2) not yet in the rollups: an hour marked to refold, an unfolded tick with samples
// in it (ts in ($1, $2]), or a price change not yet applied.
const Statement kFoldingIn{"billing_folding_in", R"sql(
SELECT EXISTS (SELECT 1 FROM usage_dirty_hours WHERE hour >= )sql" SPW_TS(1) " AND hour < " SPW_TS(2) R"sql()
    OR EXISTS (SELECT 1 FROM ingest_ticks WHERE last_ts > )sql" SPW_TS(1) " AND first_ts <= " SPW_TS(2) R"sql()
    OR EXISTS (SELECT 1 FROM rating_price_changes) AS folding)sql"};

const Statement kProfile{"billing_profile", R"sql(
SELECT legal_name, address, tax_id, email, tax_rate_bp, )sql" SPW_EPOCH_MS("updated_at") R"sql( AS updated_ms
FROM billing_profiles WHERE tenant_id = $1)sql"};
const Statement kSetProfile{"billing_set_profile", R"sql(
INSERT INTO billing_profiles (tenant_id, legal_name, address, tax_id, email, tax_rate_bp, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, )sql" SPW_TS(7) R"sql()
ON CONFLICT (tenant_id) DO UPDATE SET legal_name = EXCLUDED.legal_name, address = EXCLUDED.address,
  tax_id = EXCLUDED.tax_id, email = EXCLUDED.email, tax_rate_bp = EXCLUDED.tax_rate_bp, updated_at = EXCLUDED.updated_at)sql"};

const Statement kMarkDrafts{"billing_mark_drafts",
                            "INSERT INTO billing_dirty (tenant_id, period, marked_at) SELECT tenant_id, period, now() "
                            "FROM invoices WHERE tenant_id = $1 AND status = 'draft' ON CONFLICT DO NOTHING"};
const Statement kTenantInvoice{"billing_tenant_invoice",
                               "SELECT id, status, content_sha256 FROM invoices WHERE tenant_id = $1 AND period = $2 "
                               "FOR UPDATE"};
// Rated money per market of an invoice's lines (storage as its own "market"; tax aside).
const Statement kMarketCents{"billing_market_cents",
                             "SELECT coalesce(market, 'storage') AS market, sum(amount_cents)::bigint AS cents "
                             "FROM invoice_lines WHERE invoice_id = $1 AND kind <> 'tax' GROUP BY 1"};
const Statement kInsertInvoice{"billing_insert_invoice", R"sql(
INSERT INTO invoices (id, tenant_id, period, status, subtotal_cents, tax_rate_bp, tax_cents, total_cents,
                      usage_complete_through, coverage, buyer, issuer, content_sha256, created_at, updated_at)
VALUES ($1, $2, $3, 'draft', $4, $5, $6, $7, )sql" SPW_TS(8) R"sql(, $9, $10::jsonb, $11::jsonb, $12,
        )sql" SPW_TS(13) ", " SPW_TS(13) ")"};
const Statement kUpdateDraft{"billing_update_draft", R"sql(
UPDATE invoices SET subtotal_cents = $2, tax_rate_bp = $3, tax_cents = $4, total_cents = $5,
  usage_complete_through = )sql" SPW_TS(6) R"sql(, coverage = $7, buyer = $8::jsonb, issuer = $9::jsonb,
  content_sha256 = $10, updated_at = )sql" SPW_TS(11) " WHERE id = $1 AND status = 'draft'"};
const Statement kLateCents{"billing_late_cents",
                           "SELECT usage_period, sum(amount_cents)::bigint AS cents FROM invoice_lines "
                           "WHERE invoice_id = $1 AND kind = 'late_usage' GROUP BY usage_period"};
const Statement kDeleteLines{"billing_delete_lines", "DELETE FROM invoice_lines WHERE invoice_id = $1"};
const Statement kDeleteInvoice{"billing_delete_invoice", "DELETE FROM invoices WHERE id = $1 AND status = 'draft'"};
// One statement for all of an invoice's lines; NULLs travel as '' (texts) and -1 (prices).
const Statement kInsertLines{"billing_insert_lines", R"sql(
INSERT INTO invoice_lines (invoice_id, position, kind, description, instance_id, volume_id, market, usage_period,
                           quantity, unit, unit_price_micros, amount_cents)
SELECT $1, l.position, l.kind, l.description, nullif(l.instance_id, ''), nullif(l.volume_id, ''),
       nullif(l.market, ''), nullif(l.usage_period, ''), l.quantity, l.unit, nullif(l.unit_price, -1), l.amount
FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
            $10::text[], $11::bigint[], $12::bigint[])
  AS l (position, kind, description, instance_id, volume_id, market, usage_period, quantity, unit, unit_price, amount))sql"};
const Statement kInsertUsage{"billing_insert_usage", R"sql(
INSERT INTO invoice_usage (invoice_id, tenant_id, usage_period, instance_id, market, price_micros, gpu_ms)
SELECT $1, $2, u.period, u.instance_id, u.market, nullif(u.price, -1), u.gpu_ms
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[]) AS u (period, instance_id, market, price, gpu_ms))sql"};
const Statement kTakeNumber{"billing_take_number",
                            "UPDATE billing_number_series SET last_value = last_value + 1 WHERE series = $1 "
                            "RETURNING prefix, last_value"};
const Statement kFinalize{"billing_finalize", R"sql(
UPDATE invoices SET status = 'finalized', number = $2, canonical = $3, content_sha256 = $4,
  finalized_at = )sql" SPW_TS(5) R"sql(, updated_at = )sql" SPW_TS(5) R"sql(, closed_incomplete = $6,
  hosts_behind = $7::text[]
WHERE id = $1 AND status = 'draft')sql"};

const Statement kMarks{"billing_marks", "SELECT tenant_id, period FROM billing_dirty ORDER BY marked_at, tenant_id, period LIMIT $1"};
const Statement kTakeMark{"billing_take_mark",
                          "DELETE FROM billing_dirty WHERE tenant_id = $1 AND period = $2 RETURNING tenant_id"};
const Statement kIsClosed{"billing_is_closed",
                          "SELECT EXISTS (SELECT 1 FROM billing_periods_closed WHERE period = $1) AS closed"};
const Statement kClosedSince{"billing_closed_since",
                             "SELECT period FROM billing_periods_closed WHERE period >= $1 ORDER BY period"};
const Statement kAddLate{"billing_add_late",
                         "INSERT INTO billing_late_usage (tenant_id, period) VALUES ($1, $2) ON CONFLICT DO NOTHING"};
const Statement kLatePeriods{"billing_late_periods",
                             "SELECT period FROM billing_late_usage WHERE tenant_id = $1 AND period < $2 ORDER BY period"};
const Statement kClearLate{"billing_clear_late", "DELETE FROM billing_late_usage WHERE tenant_id = $1 AND period < $2"};
const Statement kVolumeTenants{"billing_volume_tenants",
                               "SELECT DISTINCT tenant_id FROM volumes WHERE deleted_at IS NULL OR deleted_at > " SPW_TS(1)
                               " ORDER BY tenant_id"};

const Statement kClosed{"billing_closed", R"sql(
SELECT period, )sql" SPW_EPOCH_MS("closed_at") R"sql( AS closed_ms, incomplete, array_to_string(hosts_behind, ',') AS behind,
       closed_by, (SELECT count(*) FROM invoices v WHERE v.period = c.period AND v.status = 'finalized') AS invoices
FROM billing_periods_closed c WHERE $1 = '' OR period = $1 ORDER BY period DESC)sql"};
const Statement kEarlierOpen{"billing_earlier_open",
                             "SELECT period FROM invoices WHERE period < $1 AND status = 'draft' ORDER BY period LIMIT 1"};
const Statement kTenantsOfPeriod{"billing_tenants_of_period", R"sql(
SELECT tenant_id FROM invoices WHERE period = $1
UNION SELECT tenant_id FROM volumes WHERE created_at < )sql" SPW_TS(3) " AND (deleted_at IS NULL OR deleted_at > " SPW_TS(2) R"sql()
UNION SELECT tenant_id FROM billing_late_usage WHERE period < $1
ORDER BY 1)sql"};
const Statement kInsertClosed{"billing_insert_closed", R"sql(
INSERT INTO billing_periods_closed (period, closed_at, incomplete, hosts_behind, closed_by)
VALUES ($1, )sql" SPW_TS(2) ", $3, $4::text[], $5)"};
const Statement kOpenDraftPeriods{"billing_open_draft_periods",
                                  "SELECT DISTINCT period FROM invoices WHERE status = 'draft' AND period < $1 "
                                  "AND period NOT IN (SELECT period FROM billing_periods_closed) ORDER BY period"};

#define SPW_INVOICE_COLUMNS                                                                                       \
  "id, tenant_id, period, status, number, currency, subtotal_cents, tax_rate_bp, tax_cents, total_cents, "      \
  SPW_EPOCH_MS("usage_complete_through") " AS complete_ms, coverage, closed_incomplete, "                       \
  "array_to_string(hosts_behind, ',') AS behind, buyer::text AS buyer, issuer::text AS issuer, content_sha256, " \
  "canonical, " SPW_EPOCH_MS("created_at") " AS created_ms, " SPW_EPOCH_MS("updated_at") " AS updated_ms, "     \
  SPW_EPOCH_MS("finalized_at") " AS finalized_ms"
const Statement kGetInvoice{"billing_get_invoice", "SELECT " SPW_INVOICE_COLUMNS " FROM invoices WHERE id = $1"};
const Statement kListInvoices{"billing_list_invoices", "SELECT " SPW_INVOICE_COLUMNS R"sql( FROM invoices
WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR period = $2) AND ($3 = '' OR status = $3)
  AND ($4 = '' OR (period, id) < ($4, $5))
ORDER BY period DESC, id DESC LIMIT $6)sql"};
const Statement kLinesOf{"billing_lines_of", R"sql(
SELECT invoice_id, kind, description, instance_id, volume_id, market, usage_period, quantity, unit,
       unit_price_micros, amount_cents
FROM invoice_lines WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id, position)sql"};
const Statement kCreditNotesOf{"billing_credit_notes_of", R"sql(
SELECT id, number, invoice_id, tenant_id, subtotal_cents, tax_cents, total_cents, reason, created_by,
       )sql" SPW_EPOCH_MS("created_at") R"sql( AS created_ms
FROM credit_notes WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id, number)sql"};
const Statement kLockInvoice{"billing_lock_invoice",
                             "SELECT status, subtotal_cents, tax_rate_bp, tenant_id FROM invoices WHERE id = $1 FOR UPDATE"};
const Statement kCredited{"billing_credited",
                          "SELECT coalesce(sum(subtotal_cents), 0)::bigint AS sub, coalesce(sum(tax_cents), 0)::bigint AS tax "
                          "FROM credit_notes WHERE invoice_id = $1"};
const Statement kInsertCreditNote{"billing_insert_credit_note", R"sql(
INSERT INTO credit_notes (id, number, invoice_id, tenant_id, subtotal_cents, tax_cents, total_cents, reason, created_by,
                          created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, )sql" SPW_TS(10) ")"};
const Statement kGauges{"billing_gauges", R"sql(
SELECT count(*) FILTER (WHERE status = 'draft') AS drafts, count(*) FILTER (WHERE status = 'finalized') AS finalized,
       (SELECT )sql" SPW_EPOCH_MS("min(marked_at)") R"sql( FROM billing_dirty) AS oldest_ms
FROM invoices)sql"};

std::string MonthLabelAfter(const std::string& period) {
  const auto m = ParseMonth(period);
  return MonthOf(m->end).Label();
}

Party PartyFrom(const std::string& json) {
  const boost::json::value v = boost::json::parse(json);
  const auto& o = v.as_object();
  const auto text = [&](const char* k) {
    const auto* f = o.if_contains(k);
    return f && f->is_string() ? std::string(f->as_string()) : std::string();
  };
  return {text("legal_name"), text("address"), text("tax_id"), text("email")};
}

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < s.size()) {
    const std::size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// A usage key: (instance, market, price or -1).
using UsageKey = std::tuple<std::string, std::string, std::int64_t>;

// What an invoice bills of one month's usage (invoice_usage rows), and its lines.
struct Billed {
  std::string period;
  std::vector<RatedUsage> rows;
};

struct Computed {
  Invoice invoice;
  std::vector<Billed> billed;  // the month's own usage, then each late month's
  // The hosts that ran the tenant's instances in the month and were not folded past its end: the
  // invoice records them if the month closes now.
  std::vector<std::string> hosts_behind;
};

// A host from kHostsOf is behind when it was never folded, or not up to what the month needs.
bool Behind(const pqxx::row& r) {
  const auto through = IntFrom(r["through_ms"]);
  return !through || *through < r["needed_ms"].as<std::int64_t>();
}

std::string FirstOpenAfter(Tx& tx, const std::string& period);

std::vector<InstanceFacts> FactsOf(Tx& tx, const std::vector<RatedUsage>& rows) {
  std::set<std::string> ids;
  for (const auto& r : rows) ids.insert(r.instance_id);
  std::vector<InstanceFacts> out;
  if (ids.empty()) return out;
  for (const auto& r : tx.exec_prepared(kInstanceFacts.name, TextArrayLiteral({ids.begin(), ids.end()})))
    out.push_back({r["id"].as<std::string>(), r["gpu_model"].as<std::string>(), r["instance_type"].as<std::string>(),
                   TextFrom(r["name"])});
  return out;
}

// The month's rated rows of several tenants, fetched at once, and the facts of their instances.
struct MonthRows {
  std::map<std::string, std::vector<RatedUsage>> by_tenant;
  std::vector<InstanceFacts> facts;
};

// Beyond this many tenants one pass over the whole month costs less than their index scans.
constexpr std::size_t kTenantsForOnePass = 50;

MonthRows FetchMonthRows(Tx& tx, const std::vector<std::string>* tenants, const Month& month) {
  MonthRows m;
  const bool one_pass = !tenants || tenants->size() > kTenantsForOnePass;
  const std::set<std::string> wanted = tenants ? std::set<std::string>(tenants->begin(), tenants->end())
                                               : std::set<std::string>{};
  const pqxx::result result =
      one_pass ? tx.exec_prepared(kRatedRowsAll.name, month.Label())
               : tx.exec_prepared(kRatedRowsOf.name, TextArrayLiteral(*tenants), month.Label());
  std::vector<RatedUsage> all;
  for (const auto& r : result) {
    std::string tenant = r["tenant_id"].as<std::string>();
    if (tenants && one_pass && !wanted.count(tenant)) continue;
    m.by_tenant[std::move(tenant)].push_back({r["instance_id"].as<std::string>(), r["market"].as<std::string>(),
                                              month.begin, r["gpu_ms"].as<std::int64_t>(), IntFrom(r["price"]),
                                              r["unmetered"].as<bool>()});
  }
  for (const auto& [t, rows] : m.by_tenant) all.insert(all.end(), rows.begin(), rows.end());
  m.facts = FactsOf(tx, all);
  return m;
}

// Everything (tenant, period)'s invoice says now. `storage_through`: storage is billed up to it.
Computed Compute(Tx& tx, const std::string& tenant_id, const std::string& period, TimeMs storage_through,
                 const BillingSettings& settings, const MonthRows& rows) {
  const Month month = *ParseMonth(period);
  const std::int64_t from = EpochMs(month.begin), to = EpochMs(month.end);
  Computed c;
  Invoice& inv = c.invoice;
  inv.tenant_id = tenant_id;
  inv.period = period;
  inv.issuer = settings.issuer;
  const BillingProfile profile = ProfileOf(tx, tenant_id);
  inv.buyer = profile.party;
  inv.tax_rate_bp = profile.tax_rate_bp;

  // The month's own usage, priced at each sample's time.
  const auto found = rows.by_tenant.find(tenant_id);
  std::vector<RatedUsage> own = found == rows.by_tenant.end() ? std::vector<RatedUsage>{} : found->second;
  std::vector<InvoiceLine> usage = UsageLines(own, rows.facts, std::nullopt);
  std::int64_t metered = 0;
  for (const auto& r : own) metered += r.gpu_ms;
  c.billed.push_back({period, std::move(own)});

  // Storage, at the storage price in effect, per GB-month of this month's own length.
  std::vector<StorageUsage> storage;
  const std::int64_t through = std::min(to, std::max(from, EpochMs(storage_through)));
  for (const auto& r : tx.exec_prepared(kStorage.name, tenant_id, from, through))
    storage.push_back({r["id"].as<std::string>(), r["name"].as<std::string>(), r["size_gb"].as<int>(),
                       r["gb_ms"].as<std::int64_t>(), r["price"].as<std::int64_t>()});
  std::vector<InvoiceLine> storage_lines = StorageLines(storage, DaysInMonth(period));

  // Late usage of closed months: what is rated of them now less what invoices billed of them.
  std::vector<InvoiceLine> late;
  for (const auto& lr : tx.exec_prepared(kLatePeriods.name, tenant_id, period)) {
    const std::string late_period = lr["period"].as<std::string>();
    // Billed on the first open month after it only (a later draft shows it once that one closes).
    if (FirstOpenAfter(tx, late_period) != period) continue;
    const Month lm = *ParseMonth(late_period);
    const std::vector<std::string> one{tenant_id};
    const MonthRows then = FetchMonthRows(tx, &one, lm);
    std::map<UsageKey, std::int64_t> rated;
    if (const auto it = then.by_tenant.find(tenant_id); it != then.by_tenant.end())
      for (const auto& r : it->second) rated[{r.instance_id, r.market, r.price_micros.value_or(-1)}] += r.gpu_ms;
    for (const auto& r : tx.exec_prepared(kInvoiced.name, tenant_id, late_period))
      rated[{r["instance_id"].as<std::string>(), r["market"].as<std::string>(),
             IntFrom(r["price"]).value_or(-1)}] -= r["gpu_ms"].as<std::int64_t>();
    std::vector<RatedUsage> extra;
    for (const auto& [key, ms] : rated) {
      if (ms <= 0) continue;  // never less than billed: rated usage only grows
      const auto& [instance, market, price] = key;
      extra.push_back({instance, market, lm.begin, ms, price < 0 ? std::nullopt : std::optional<std::int64_t>(price)});
    }
    if (extra.empty()) continue;
    auto lines = UsageLines(extra, then.facts, late_period);
    late.insert(late.end(), lines.begin(), lines.end());
    c.billed.push_back({late_period, std::move(extra)});
  }

  inv.lines = std::move(usage);
  inv.lines.insert(inv.lines.end(), storage_lines.begin(), storage_lines.end());
  inv.lines.insert(inv.lines.end(), late.begin(), late.end());
  Total(inv);

  // How complete the month's usage is: the oldest folded watermark of the hosts that ran the
  // tenant's instances in it (capped at the month's end), and metered over held GPU time.
  std::optional<std::int64_t> complete;
  bool unknown = false;
  for (const auto& r : tx.exec_prepared(kHostsOf.name, tenant_id, from, to)) {
    if (Behind(r)) c.hosts_behind.push_back(r["host_id"].as<std::string>());
    const auto t = IntFrom(r["through_ms"]);
    if (!t) {
      unknown = true;
      continue;
    }
    const std::int64_t capped = std::min(*t, to);
    if (!complete || capped < *complete) complete = capped;
  }
  if (complete && !unknown) inv.usage_complete_through = FromEpochMs(*complete);
  const std::int64_t held = tx.exec_prepared1(kHeld.name, tenant_id, from, to)["held_ms"].as<std::int64_t>();
  inv.coverage = CoverageText(metered, held);
  return c;
}

std::string ContentHash(const Invoice& inv) { return Sha256Hex(CanonicalInvoiceJson(inv)); }

void WriteLines(Tx& tx, const std::string& invoice_id, const std::vector<InvoiceLine>& lines) {
  std::vector<int> positions;
  std::vector<std::string> kinds, descriptions, instances, volumes, markets, periods, quantities, units;
  std::vector<std::int64_t> prices, amounts;
  int position = 0;
  for (const auto& l : lines) {
    positions.push_back(++position);
    kinds.push_back(l.kind);
    descriptions.push_back(l.description);
    instances.push_back(l.instance_id.value_or(""));
    volumes.push_back(l.volume_id.value_or(""));
    markets.push_back(l.market.value_or(""));
    periods.push_back(l.usage_period.value_or(""));
    quantities.push_back(l.quantity);
    units.push_back(l.unit);
    prices.push_back(l.unit_price_micros.value_or(-1));
    amounts.push_back(l.amount_cents);
  }
  tx.exec_prepared(kInsertLines.name, invoice_id, IntArrayLiteral(positions), TextArrayLiteral(kinds),
                   TextArrayLiteral(descriptions), TextArrayLiteral(instances), TextArrayLiteral(volumes),
                   TextArrayLiteral(markets), TextArrayLiteral(periods), TextArrayLiteral(quantities),
                   TextArrayLiteral(units), Int64ArrayLiteral(prices), Int64ArrayLiteral(amounts));
}

BilledDelta MarketCents(Tx& tx, const std::string& invoice_id) {
  BilledDelta out;
  for (const auto& r : tx.exec_prepared(kMarketCents.name, invoice_id))
    out[r["market"].as<std::string>()] = r["cents"].as<std::int64_t>();
  return out;
}
BilledDelta MarketCents(const Invoice& inv) {
  BilledDelta out;
  for (const auto& l : inv.lines)
    if (l.kind != "tax") out[l.market.value_or("storage")] += l.amount_cents;
  return out;
}
BilledDelta Minus(BilledDelta now, const BilledDelta& before) {
  for (const auto& [m, c] : before) now[m] -= c;
  return now;
}

// Writes `c` as the draft of its tenant-month (inserting, rewriting or removing it). Returns the
// invoice's id ("" when there is none) and fills `delta` with what changed per market.
// usage.late for each earlier month whose late usage on this draft grew (from `before`, per month).
void EmitLate(Tx& tx, const Invoice& inv, const std::map<std::string, std::int64_t>& before, TimeMs now) {
  std::map<std::string, std::int64_t> after;
  for (const auto& l : inv.lines)
    if (l.kind == "late_usage" && l.usage_period) after[*l.usage_period] += l.amount_cents;
  for (const auto& [period, cents] : after) {
    const auto was = before.find(period);
    const std::int64_t prior = was == before.end() ? 0 : was->second;
    if (cents <= prior) continue;
    webhooks::Emit(tx, "usage.late", inv.tenant_id,
                   ToJson(boost::json::object{{"usage_period", period},
                                              {"invoice_id", inv.id},
                                              {"invoice_period", inv.period},
                                              {"amount", FormatAmount(cents)},
                                              {"added", FormatAmount(cents - prior)}}),
                   now);
  }
}

std::string WriteDraft(Tx& tx, Computed& c, TimeMs now, BilledDelta* delta) {
  Invoice& inv = c.invoice;
  const auto existing = tx.exec_prepared(kTenantInvoice.name, inv.tenant_id, inv.period);
  if (!existing.empty() && existing[0]["status"].as<std::string>() != "draft") return "";
  const std::string hash = ContentHash(inv);
  const auto complete = TextOf(inv.usage_complete_through ? std::optional<std::int64_t>(EpochMs(*inv.usage_complete_through))
                                                          : std::nullopt);  // epoch ms, for SPW_TS
  if (existing.empty()) {
    if (inv.Empty()) return "";
    inv.id = NewId("inv");
    tx.exec_prepared(kInsertInvoice.name, inv.id, inv.tenant_id, inv.period, inv.subtotal_cents, inv.tax_rate_bp,
                     inv.tax_cents, inv.total_cents, Nullable(complete), Nullable(inv.coverage),
                     ToJson(PartyJson(inv.buyer)), ToJson(PartyJson(inv.issuer)), hash, EpochMs(now));
    WriteLines(tx, inv.id, inv.lines);
    EmitLate(tx, inv, {}, now);
    if (delta) *delta = MarketCents(inv);
    return inv.id;
  }
  inv.id = existing[0]["id"].as<std::string>();
  if (existing[0]["content_sha256"].as<std::string>() == hash) return inv.id;
  const BilledDelta before = MarketCents(tx, inv.id);
  std::map<std::string, std::int64_t> late_before;
  for (const auto& r : tx.exec_prepared(kLateCents.name, inv.id))
    late_before[r["usage_period"].as<std::string>()] = r["cents"].as<std::int64_t>();
  tx.exec_prepared(kDeleteLines.name, inv.id);
  if (inv.Empty()) {
    tx.exec_prepared(kDeleteInvoice.name, inv.id);
    if (delta) *delta = Minus({}, before);
    return "";
  }
  tx.exec_prepared(kUpdateDraft.name, inv.id, inv.subtotal_cents, inv.tax_rate_bp, inv.tax_cents, inv.total_cents,
                   Nullable(complete), Nullable(inv.coverage), ToJson(PartyJson(inv.buyer)),
                   ToJson(PartyJson(inv.issuer)), hash, EpochMs(now));
  WriteLines(tx, inv.id, inv.lines);
  EmitLate(tx, inv, late_before, now);
  if (delta) *delta = Minus(MarketCents(inv), before);
  return inv.id;
}


// The first month after `period` that is not closed.
std::string FirstOpenAfter(Tx& tx, const std::string& period) {
  std::set<std::string> closed;
  for (const auto& r : tx.exec_prepared(kClosedSince.name, period)) closed.insert(r["period"].as<std::string>());
  std::string p = MonthLabelAfter(period);
  while (closed.count(p)) p = MonthLabelAfter(p);
  return p;
}

void Accumulate(BilledDelta& into, const BilledDelta& d) {
  for (const auto& [m, c] : d) into[m] += c;
}

StoredInvoice InvoiceFrom(const pqxx::row& r) {
  StoredInvoice s;
  Invoice& i = s.invoice;
  i.id = r["id"].as<std::string>();
  i.tenant_id = r["tenant_id"].as<std::string>();
  i.period = r["period"].as<std::string>();
  i.status = r["status"].as<std::string>();
  i.number = TextFrom(r["number"]);
  i.currency = r["currency"].as<std::string>();
  i.subtotal_cents = r["subtotal_cents"].as<std::int64_t>();
  i.tax_rate_bp = r["tax_rate_bp"].as<int>();
  i.tax_cents = r["tax_cents"].as<std::int64_t>();
  i.total_cents = r["total_cents"].as<std::int64_t>();
  i.usage_complete_through = TimeFrom(r["complete_ms"]);
  i.coverage = TextFrom(r["coverage"]);
  i.closed_incomplete = r["closed_incomplete"].as<bool>();
  i.hosts_behind = SplitList(r["behind"].as<std::string>());
  i.buyer = PartyFrom(r["buyer"].as<std::string>());
  i.issuer = PartyFrom(r["issuer"].as<std::string>());
  i.finalized_at = TimeFrom(r["finalized_ms"]);
  if (i.status == "finalized") {
    s.sha256 = r["content_sha256"].as<std::string>();
    s.canonical = r["canonical"].as<std::string>();
  }
  s.created_at = *TimeFrom(r["created_ms"]);
  s.updated_at = *TimeFrom(r["updated_ms"]);
  return s;
}

void LoadParts(Tx& tx, std::vector<StoredInvoice>& invoices) {
  if (invoices.empty()) return;
  std::map<std::string, StoredInvoice*> by_id;
  std::vector<std::string> ids;
  for (auto& s : invoices) {
    by_id[s.invoice.id] = &s;
    ids.push_back(s.invoice.id);
  }
  const std::string list = TextArrayLiteral(ids);
  for (const auto& r : tx.exec_prepared(kLinesOf.name, list)) {
    InvoiceLine l;
    l.kind = r["kind"].as<std::string>();
    l.description = r["description"].as<std::string>();
    l.instance_id = TextFrom(r["instance_id"]);
    l.volume_id = TextFrom(r["volume_id"]);
    l.market = TextFrom(r["market"]);
    l.usage_period = TextFrom(r["usage_period"]);
    l.quantity = r["quantity"].as<std::string>();
    l.unit = r["unit"].as<std::string>();
    l.unit_price_micros = IntFrom(r["unit_price_micros"]);
    l.amount_cents = r["amount_cents"].as<std::int64_t>();
    by_id[r["invoice_id"].as<std::string>()]->invoice.lines.push_back(std::move(l));
  }
  for (const auto& r : tx.exec_prepared(kCreditNotesOf.name, list)) {
    CreditNote n{r["id"].as<std::string>(),        r["number"].as<std::string>(),
                 r["invoice_id"].as<std::string>(), r["tenant_id"].as<std::string>(),
                 r["reason"].as<std::string>(),     r["created_by"].as<std::string>(),
                 r["subtotal_cents"].as<std::int64_t>(), r["tax_cents"].as<std::int64_t>(),
                 r["total_cents"].as<std::int64_t>(), *TimeFrom(r["created_ms"])};
    by_id[n.invoice_id]->credit_notes.push_back(std::move(n));
  }
}

// `items` in runs of at most `size`, in order.
std::vector<std::vector<std::string>> Chunks(const std::vector<std::string>& items, std::size_t size) {
  std::vector<std::vector<std::string>> out;
  for (std::size_t i = 0; i < items.size(); i += size)
    out.emplace_back(items.begin() + static_cast<std::ptrdiff_t>(i),
                     items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), i + size)));
  return out;
}

// The next number of `series` ("invoice", "credit_note"), taken in `tx`: "SPW-000042".
std::string TakeNumber(Tx& tx, const char* series) {
  const auto number = tx.exec_prepared1(kTakeNumber.name, series);
  std::string digits = std::to_string(number["last_value"].as<std::int64_t>());
  if (digits.size() < 6) digits.insert(0, 6 - digits.size(), '0');
  return number["prefix"].as<std::string>() + digits;
}

PeriodClose CloseFrom(const pqxx::row& r) {
  PeriodClose c;
  c.period = r["period"].as<std::string>();
  c.closed_at = *TimeFrom(r["closed_ms"]);
  c.incomplete = r["incomplete"].as<bool>();
  c.hosts_behind = SplitList(r["behind"].as<std::string>());
  c.closed_by = r["closed_by"].as<std::string>();
  c.invoices = r["invoices"].as<int>();
  return c;
}

const Statement kFirstBillable{"billing_first_billable", R"sql(
SELECT )sql" SPW_EPOCH_MS("(SELECT min(started_at) FROM instances)") R"sql( AS instance_ms,
       )sql" SPW_EPOCH_MS("(SELECT min(created_at) FROM volumes)") R"sql( AS volume_ms,
       )sql" SPW_EPOCH_MS("(SELECT min(applied_at) FROM schema_migrations)") R"sql( AS installed_ms)sql"};

}  // namespace

BillingSettings BillingSettings::From(const Config& config) {
  BillingSettings s;
  s.close_max_wait = config.Duration("billing.close_max_wait");
  s.bill_unmetered_held_time = config.String("billing.unmetered_held_time") == "bill";
  s.funds = FundsSettings::From(config);
  s.issuer = {config.String("billing.issuer_name"), config.String("billing.issuer_address"),
              config.String("billing.issuer_tax_id"), config.String("billing.issuer_email")};
  return s;
}

bool PeriodClosed(Tx& tx, const std::string& period) {
  return tx.exec_prepared1(kIsClosed.name, period)["closed"].as<bool>();
}

TimeMs VolumeMeteredThrough(Tx& tx, TimeMs fallback) {
  const auto rows = tx.exec_prepared(kVolumeMetered.name);
  if (rows.empty() || rows[0]["through_ms"].is_null()) return fallback;
  return FromEpochMs(rows[0]["through_ms"].as<std::int64_t>());
}

std::int64_t StoredInvoice::credited_cents() const {
  std::int64_t sum = 0;
  for (const auto& n : credit_notes) sum += n.total_cents;
  return sum;
}

BillingProfile ProfileOf(Tx& tx, const std::string& tenant_id) {
  BillingProfile p;
  p.tenant_id = tenant_id;
  const auto rows = tx.exec_prepared(kProfile.name, tenant_id);
  if (rows.empty()) return p;
  const auto& r = rows[0];
  p.party = {r["legal_name"].as<std::string>(), r["address"].as<std::string>(), r["tax_id"].as<std::string>(),
             r["email"].as<std::string>()};
  p.tax_rate_bp = r["tax_rate_bp"].as<int>();
  p.updated_at = TimeFrom(r["updated_ms"]);
  return p;
}

void SetProfile(Tx& tx, const BillingProfile& p, TimeMs now) {
  tx.exec_prepared(kSetProfile.name, p.tenant_id, p.party.legal_name, p.party.address, p.party.tax_id, p.party.email,
                   p.tax_rate_bp, EpochMs(now));
  tx.exec_prepared(kMarkDrafts.name, p.tenant_id);  // its open drafts show the new buyer and rate
}

BilledDelta RefreshDrafts(Tx& tx, const std::vector<std::string>& tenants, const std::string& period, TimeMs now,
                          const BillingSettings& settings) {
  tx.exec_prepared(kLockShared.name, kBillingLock);
  BilledDelta delta;
  if (tenants.empty() || PeriodClosed(tx, period)) return delta;
  const TimeMs storage_through = VolumeMeteredThrough(tx, now);
  const MonthRows rows = FetchMonthRows(tx, &tenants, *ParseMonth(period));
  for (const auto& tenant : tenants) {
    Computed c = Compute(tx, tenant, period, storage_through, settings, rows);
    BilledDelta d;
    WriteDraft(tx, c, now, &d);
    Accumulate(delta, d);
  }
  return delta;
}

BilledDelta DraftInvoices(Session& conn, TimeMs now, const BillingSettings& settings, int* drafted) {
  constexpr int kBatch = 5000;  // marks taken per run
  constexpr std::size_t kChunk = 5000;  // tenants drafted per transaction (one aggregate each)
  BilledDelta total;
  int count = 0;
  std::map<std::string, std::vector<std::string>> marked;  // period -> tenants
  std::vector<std::string> volume_tenants;
  const Month current = MonthOf(now);
  const std::string previous = MonthOf(current.begin - Millis(1)).Label();
  {
    pqxx::read_transaction tx(conn, "billing_drafts_plan");
    for (const auto& r : tx.exec_prepared(kMarks.name, kBatch))
      marked[r["period"].as<std::string>()].push_back(r["tenant_id"].as<std::string>());
    for (const auto& r : tx.exec_prepared(kVolumeTenants.name, EpochMs(MonthOf(current.begin - Millis(1)).begin)))
      volume_tenants.push_back(r["tenant_id"].as<std::string>());
  }
  std::map<std::string, std::set<std::string>> todo;  // period -> tenants whose drafts to refresh
  for (const auto& [period, tenants] : marked)
    for (const auto& chunk : Chunks(tenants, kChunk)) {
      // Taking the marks and drafting commit together (a mark is never lost to a failed draft); a
      // mark of a closed month is late usage, drafted below on the first open month after it.
      struct Out {
        BilledDelta delta;
        std::vector<std::pair<std::string, std::string>> late;
        int drafted = 0;
      };
      const Out out = InTransaction(conn, [&](Tx& tx) {
        Out o;
        tx.exec_prepared(kLockShared.name, kBillingLock);
        std::vector<std::string> taken;
        for (const auto& t : chunk)
          if (!tx.exec_prepared(kTakeMark.name, t, period).empty()) taken.push_back(t);
        if (PeriodClosed(tx, period)) {
          const std::string target = taken.empty() ? "" : FirstOpenAfter(tx, period);
          for (const auto& t : taken) {
            tx.exec_prepared(kAddLate.name, t, period);
            o.late.emplace_back(target, t);
          }
          return o;
        }
        o.delta = RefreshDrafts(tx, taken, period, now, settings);
        o.drafted = static_cast<int>(taken.size());
        return o;
      });
      Accumulate(total, out.delta);
      count += out.drafted;
      for (const auto& [target, t] : out.late) todo[target].insert(t);
    }
  for (const auto& t : volume_tenants) {
    todo[current.Label()].insert(t);
    todo[previous].insert(t);  // nothing once it is closed
  }
  for (const auto& [period, set] : todo) {
    for (const auto& chunk : Chunks({set.begin(), set.end()}, kChunk)) {
      Accumulate(total, InTransaction(conn, [&](Tx& tx) { return RefreshDrafts(tx, chunk, period, now, settings); }));
      count += static_cast<int>(chunk.size());
    }
  }
  if (drafted) *drafted = count;
  return total;
}

CloseReadiness ReadinessOf(Tx& tx, const Month& month) {
  CloseReadiness r;
  for (const auto& row : tx.exec_prepared(kHostsOf.name, "", EpochMs(month.begin), EpochMs(month.end)))
    if (Behind(row)) r.hosts_behind.push_back(row["host_id"].as<std::string>());
  r.folding = tx.exec_prepared1(kFoldingIn.name, EpochMs(month.begin), EpochMs(month.end))["folding"].as<bool>();
  return r;
}

PeriodClose ClosePeriod(Tx& tx, const Month& month, TimeMs now, const BillingSettings& settings,
                        const std::string& closed_by) {
  tx.exec_prepared(kLockExclusive.name, kBillingLock);
  const std::string period = month.Label();
  if (auto closed = ClosedPeriod(tx, period)) {
    closed->already = true;
    closed->invoices = 0;
    return *closed;
  }
  if (now < month.end)
    throw ApiError(409, "period_open", "period " + period + " has not ended yet: it ends at " + FormatTime(month.end));
  const auto earlier = tx.exec_prepared(kEarlierOpen.name, period);
  if (!earlier.empty())
    throw ApiError(409, "earlier_period_open",
                   "period " + earlier[0]["period"].as<std::string>() + " is not closed yet: close it first");
  const CloseReadiness readiness = ReadinessOf(tx, month);
  PeriodClose out;
  out.period = period;
  out.closed_at = now;
  out.closed_by = closed_by;
  out.incomplete = !readiness.hosts_behind.empty();
  out.hosts_behind = readiness.hosts_behind;
  const std::int64_t from = EpochMs(month.begin), to = EpochMs(month.end);
  // Every tenant with usage rated in the month (from the one pass over it), a draft, storage or late usage.
  const MonthRows rows = FetchMonthRows(tx, nullptr, month);
  std::set<std::string> tenant_set;
  for (const auto& [t, r] : rows.by_tenant) tenant_set.insert(t);
  for (const auto& r : tx.exec_prepared(kTenantsOfPeriod.name, period, from, to)) tenant_set.insert(r["tenant_id"].as<std::string>());
  const std::vector<std::string> tenants(tenant_set.begin(), tenant_set.end());
  for (const auto& tenant : tenants) {
    Computed c = Compute(tx, tenant, period, month.end, settings, rows);
    BilledDelta delta;
    const std::string id = WriteDraft(tx, c, now, &delta);
    Accumulate(out.billed, delta);
    tx.exec_prepared(kClearLate.name, tenant, period);
    if (id.empty()) continue;  // nothing billed: no invoice
    Invoice& inv = c.invoice;
    inv.id = id;
    // What it billed of each month's usage, so that usage rated later is billed once, as late usage.
    std::vector<std::string> periods, instances, markets;
    std::vector<std::int64_t> prices, gpu_ms;
    for (const auto& b : c.billed)
      for (const auto& r : b.rows) {
        periods.push_back(b.period);
        instances.push_back(r.instance_id);
        markets.push_back(r.market);
        prices.push_back(r.price_micros.value_or(-1));
        gpu_ms.push_back(r.gpu_ms);
      }
    if (!periods.empty())
      tx.exec_prepared(kInsertUsage.name, id, tenant, TextArrayLiteral(periods), TextArrayLiteral(instances),
                       TextArrayLiteral(markets), Int64ArrayLiteral(prices), Int64ArrayLiteral(gpu_ms));
    // Its hosts behind, if the month closed incomplete for it.
    inv.hosts_behind = c.hosts_behind;
    inv.closed_incomplete = !inv.hosts_behind.empty();
    inv.number = TakeNumber(tx, "invoice");
    inv.status = "finalized";
    inv.finalized_at = now;
    const std::string canonical = CanonicalInvoiceJson(inv);
    tx.exec_prepared(kFinalize.name, id, *inv.number, canonical, Sha256Hex(canonical), EpochMs(now),
                     inv.closed_incomplete, TextArrayLiteral(inv.hosts_behind));
    webhooks::Emit(tx, "invoice.finalized", tenant,
                   ToJson(boost::json::object{{"invoice_id", id},
                                              {"number", *inv.number},
                                              {"period", period},
                                              {"subtotal", FormatAmount(inv.subtotal_cents)},
                                              {"tax", FormatAmount(inv.tax_cents)},
                                              {"total", FormatAmount(inv.total_cents)},
                                              {"currency", inv.currency},
                                              {"closed_incomplete", inv.closed_incomplete}}),
                   now);
    ++out.invoices;
  }
  tx.exec_prepared(kInsertClosed.name, period, EpochMs(now), out.incomplete, TextArrayLiteral(out.hosts_behind),
                   closed_by);
  return out;
}

std::optional<PeriodClose> ClosedPeriod(Tx& tx, const std::string& period) {
  const auto rows = tx.exec_prepared(kClosed.name, period);
  if (rows.empty()) return std::nullopt;
  return CloseFrom(rows[0]);
}

std::vector<PeriodClose> ClosedPeriods(Tx& tx) {
  std::vector<PeriodClose> out;
  for (const auto& r : tx.exec_prepared(kClosed.name, "")) out.push_back(CloseFrom(r));
  return out;
}

std::vector<Month> PeriodsToClose(Tx& tx, TimeMs now) {
  const Month current = MonthOf(now);
  std::set<std::string> periods;
  for (const auto& r : tx.exec_prepared(kOpenDraftPeriods.name, current.Label())) periods.insert(r["period"].as<std::string>());
  const std::string previous = MonthOf(current.begin - Millis(1)).Label();
  if (!PeriodClosed(tx, previous)) periods.insert(previous);
  std::vector<Month> out;
  for (const auto& p : periods) out.push_back(*ParseMonth(p));
  return out;
}

Month FirstBillableMonth(Tx& tx, TimeMs now) {
  const auto r = tx.exec_prepared1(kFirstBillable.name);
  // Never after now (a clock behind the installation): so the first is never after the month before now's.
  const Month installed = MonthOf(std::min(TimeFrom(r["installed_ms"]).value_or(now), now));
  Month first = MonthOf(installed.begin - Millis(1));
  for (const char* column : {"instance_ms", "volume_ms"})
    if (const auto t = TimeFrom(r[column]); t && *t < first.begin) first = MonthOf(*t);
  return first;
}

std::optional<StoredInvoice> FindInvoice(Tx& tx, const std::string& id) {
  const auto rows = tx.exec_prepared(kGetInvoice.name, id);
  if (rows.empty()) return std::nullopt;
  std::vector<StoredInvoice> one{InvoiceFrom(rows[0])};
  LoadParts(tx, one);
  return std::move(one[0]);
}

std::vector<StoredInvoice> ListInvoices(Tx& tx, const InvoiceQuery& q) {
  std::string after_period, after_id;
  if (const auto slash = q.after.find('/'); slash != std::string::npos) {
    after_period = q.after.substr(0, slash);
    after_id = q.after.substr(slash + 1);
  }
  std::vector<StoredInvoice> out;
  for (const auto& r : tx.exec_prepared(kListInvoices.name, q.tenant_id, q.period, q.status, after_period, after_id, q.limit))
    out.push_back(InvoiceFrom(r));
  LoadParts(tx, out);
  return out;
}

CreditNote IssueCreditNote(Tx& tx, const std::string& invoice_id, std::int64_t amount_cents, const std::string& reason,
                           const std::string& created_by, TimeMs now) {
  const auto rows = tx.exec_prepared(kLockInvoice.name, invoice_id);
  if (rows.empty()) throw ApiError(404, "not_found", "no invoice " + invoice_id);
  if (rows[0]["status"].as<std::string>() != "finalized")
    throw ApiError(409, "invoice_draft", "invoice " + invoice_id + " is a draft: only a finalized invoice is credited");
  const std::int64_t subtotal = rows[0]["subtotal_cents"].as<std::int64_t>();
  const int rate = rows[0]["tax_rate_bp"].as<int>();
  const auto credited = tx.exec_prepared1(kCredited.name, invoice_id);
  const std::int64_t credited_sub = credited["sub"].as<std::int64_t>(), credited_tax = credited["tax"].as<std::int64_t>();
  const auto split = SplitCredit(subtotal, rate, credited_sub, credited_tax, amount_cents);
  if (!split)
    throw InvalidInput("amount: at most " + FormatAmount(subtotal - credited_sub) +
                       " (before tax) remains to be credited on this invoice");
  CreditNote n;
  n.id = NewId("cn");
  n.number = TakeNumber(tx, "credit_note");
  n.invoice_id = invoice_id;
  n.tenant_id = rows[0]["tenant_id"].as<std::string>();
  n.subtotal_cents = split->subtotal_cents;
  n.tax_cents = split->tax_cents;
  n.total_cents = split->total_cents();
  n.reason = reason;
  n.created_by = created_by;
  n.created_at = now;
  tx.exec_prepared(kInsertCreditNote.name, n.id, n.number, n.invoice_id, n.tenant_id, n.subtotal_cents, n.tax_cents,
                   n.total_cents, n.reason, n.created_by, EpochMs(now));
  webhooks::Emit(tx, "credit_note.created", n.tenant_id,
                 ToJson(boost::json::object{{"credit_note_id", n.id},
                                            {"number", n.number},
                                            {"invoice_id", n.invoice_id},
                                            {"amount", FormatAmount(n.subtotal_cents)},
                                            {"tax", FormatAmount(n.tax_cents)},
                                            {"total", FormatAmount(n.total_cents)},
                                            {"reason", n.reason}}),
                 now);
  return n;
}

BillingGauges ReadBillingGauges(Tx& tx) {
  const auto r = tx.exec_prepared1(kGauges.name);
  return {r["drafts"].as<std::int64_t>(), r["finalized"].as<std::int64_t>(), TimeFrom(r["oldest_ms"])};
}

}  // namespace spillway::billing
