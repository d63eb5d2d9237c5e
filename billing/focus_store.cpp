// What the FOCUS export reads (billing/focus.hpp): a period's invoices, the hourly rated rows each
// line billed, the volume spans behind storage lines, and the credit notes issued in the period.
#include <algorithm>
#include <set>

#include "billing/focus.hpp"
#include "billing/storage_sql.hpp"
#include "core/db.hpp"
#include "core/sql.hpp"

namespace spillway::billing {
namespace {

const Statement kTenantNames{"focus_tenant_names", "SELECT id, name FROM tenants WHERE id = ANY($1::text[])"};
const Statement kHourly{"focus_hourly", R"sql(
SELECT instance_id, market, )sql" SPW_EPOCH_MS("hour") R"sql( AS hour_ms, price_micros_per_gpu_hour AS price,
       list_price_micros_per_gpu_hour AS list_price, sum(gpu_ms)::bigint AS gpu_ms
FROM usage_rated_hourly
WHERE tenant_id = $1 AND hour >= )sql" SPW_TS(2) " AND hour < " SPW_TS(3) R"sql( AND price_micros_per_gpu_hour IS NOT NULL
GROUP BY instance_id, market, hour, price_micros_per_gpu_hour, list_price_micros_per_gpu_hour)sql"};
// What finalized invoices billed of a tenant's month, per instance and price, in the order they were
// numbered (each one's hours follow the hours of those before it).
const Statement kBilledOf{"focus_billed_of", R"sql(
SELECT u.invoice_id, u.instance_id, u.market, u.price_micros AS price, u.gpu_ms
FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id
WHERE u.tenant_id = $1 AND u.usage_period = $2 AND u.price_micros IS NOT NULL
ORDER BY i.number)sql"};
const Statement kSkus{"focus_skus", "SELECT id, region, gpu_model, instance_type, name FROM instances WHERE id = ANY($1::text[])"};
// A tenant's volumes at each storage price in effect, within [$2, $3).
const Statement kVolumeSpans{"focus_volume_spans", "WITH " SPW_STORAGE_SPANS
                             " SELECT v.id, v.name, v.region, v.size_gb, sp.price, "
                             SPW_EPOCH_MS("greatest(v.created_at, sp.from_ts, " SPW_TS(2) ")") " AS from_ms, "
                             SPW_EPOCH_MS("least(coalesce(v.deleted_at, " SPW_TS(3) "), sp.to_ts, " SPW_TS(3) ")")
                             " AS to_ms" SPW_STORAGE_FROM(2, 3) " AND v.tenant_id = $1 ORDER BY v.id, from_ms"};
const Statement kCreditNotesIn{"focus_credit_notes_in", R"sql(
SELECT id, invoice_id FROM credit_notes
WHERE created_at >= )sql" SPW_TS(1) " AND created_at < " SPW_TS(2) R"sql( AND ($3 = '' OR tenant_id = $3)
ORDER BY number)sql"};

struct BilledEntry {
  std::string invoice_id;
  PriceKey key;
  std::int64_t gpu_ms;
};

// One tenant-month's hourly rows per instance, and what finalized invoices billed of it.
struct MonthUsage {
  std::map<std::string, std::vector<HourlyRated>> hours;  // instance -> rows
  std::map<std::string, std::vector<BilledEntry>> billed;  // instance -> in number order
};

MonthUsage LoadMonth(Tx& tx, const std::string& tenant_id, const std::string& period) {
  const Month m = *ParseMonth(period);
  MonthUsage u;
  for (const auto& r : tx.exec_prepared(kHourly.name, tenant_id, EpochMs(m.begin), EpochMs(m.end))) {
    std::string instance = r["instance_id"].as<std::string>();
    u.hours[instance].push_back({instance, r["market"].as<std::string>(), *TimeFrom(r["hour_ms"]),
                                 r["price"].as<std::int64_t>(), IntFrom(r["list_price"]), r["gpu_ms"].as<std::int64_t>()});
  }
  for (const auto& r : tx.exec_prepared(kBilledOf.name, tenant_id, period))
    u.billed[r["instance_id"].as<std::string>()].push_back(
        {r["invoice_id"].as<std::string>(), {r["market"].as<std::string>(), r["price"].as<std::int64_t>()},
         r["gpu_ms"].as<std::int64_t>()});
  return u;
}

// The hours of `instance`'s `market` usage in month `u` that invoice `s` billed: after what the
// invoices numbered before it billed; a draft, everything after what any finalized invoice billed.
std::vector<HourlyRated> HoursBilledBy(const StoredInvoice& s, const MonthUsage& u, const std::string& instance,
                                       const std::string& market) {
  const auto h = u.hours.find(instance);
  if (h == u.hours.end()) return {};
  std::vector<HourlyRated> rows;
  for (const auto& r : h->second)
    if (r.market == market) rows.push_back(r);
  std::map<PriceKey, std::int64_t> skip;
  std::optional<std::map<PriceKey, std::int64_t>> take;
  if (s.invoice.status == "finalized") take.emplace();
  bool mine_seen = false;
  if (const auto b = u.billed.find(instance); b != u.billed.end())
    for (const auto& e : b->second) {
      if (e.invoice_id == s.invoice.id) {
        mine_seen = true;
        if (take) (*take)[e.key] += e.gpu_ms;
      } else if (!mine_seen || !take) {
        skip[e.key] += e.gpu_ms;  // billed before this one (or, for a draft, by any finalized invoice)
      }
    }
  return TakeHours(std::move(rows), skip, take);
}

}  // namespace

FocusExport ExportFocus(Tx& tx, const Month& period, const std::string& tenant_id, const BillingSettings& settings,
                        TimeMs now) {
  FocusExport out(period, settings.issuer.legal_name);
  std::vector<StoredInvoice> invoices;
  InvoiceQuery q;
  q.period = period.Label();
  q.tenant_id = tenant_id;
  q.limit = 1000;
  for (;;) {
    auto page = ListInvoices(tx, q);
    const bool more = static_cast<int>(page.size()) == q.limit;
    if (more) q.after = page.back().invoice.period + "/" + page.back().invoice.id;
    for (auto& s : page) invoices.push_back(std::move(s));
    if (!more) break;
  }
  std::vector<std::pair<std::string, std::string>> notes;  // credit note id, invoice id
  for (const auto& r : tx.exec_prepared(kCreditNotesIn.name, EpochMs(period.begin), EpochMs(period.end), tenant_id))
    notes.emplace_back(r["id"].as<std::string>(), r["invoice_id"].as<std::string>());
  std::map<std::string, StoredInvoice> credited;
  for (const auto& [note, invoice] : notes)
    if (!credited.count(invoice))
      if (auto found = FindInvoice(tx, invoice)) credited.emplace(invoice, std::move(*found));

  std::set<std::string> tenants;
  for (const auto& s : invoices) tenants.insert(s.invoice.tenant_id);
  for (const auto& [id, s] : credited) tenants.insert(s.invoice.tenant_id);
  std::map<std::string, FocusAccount> accounts;
  for (const auto& r : tx.exec_prepared(kTenantNames.name, TextArrayLiteral({tenants.begin(), tenants.end()})))
    accounts[r["id"].as<std::string>()] = {r["id"].as<std::string>(), r["name"].as<std::string>()};
  const auto account = [&](const std::string& id) {
    const auto a = accounts.find(id);
    return a == accounts.end() ? FocusAccount{id, id} : a->second;
  };

  // Storage is shown up to where volume metering has measured, or now before its first hour (as
  // drafts bill it).
  const TimeMs storage_through = std::min(period.end, std::max(period.begin, VolumeMeteredThrough(tx, now)));
  for (const auto& s : invoices) {
    const Invoice& inv = s.invoice;
    std::map<std::string, MonthUsage> months;  // usage period -> its usage
    std::set<std::string> instances;
    FocusExport::HoursOf hours;
    for (const auto& l : inv.lines) {
      if ((l.kind != "usage" && l.kind != "late_usage") || !l.instance_id) continue;
      const std::string p = l.usage_period.value_or(inv.period);
      auto it = months.find(p);
      if (it == months.end()) it = months.emplace(p, LoadMonth(tx, inv.tenant_id, p)).first;
      const std::string market = l.market.value_or("on_demand");
      hours[{p, *l.instance_id, market}] = HoursBilledBy(s, it->second, *l.instance_id, market);
      instances.insert(*l.instance_id);
    }
    std::map<std::string, InstanceSku> skus;
    if (!instances.empty())
      for (const auto& r : tx.exec_prepared(kSkus.name, TextArrayLiteral({instances.begin(), instances.end()}))) {
        InstanceSku k{r["id"].as<std::string>(), r["region"].as<std::string>(), r["gpu_model"].as<std::string>(),
                      r["instance_type"].as<std::string>(), TextFrom(r["name"])};
        skus.emplace(k.instance_id, std::move(k));
      }
    std::vector<VolumeSpan> volumes;
    const bool has_storage =
        std::any_of(inv.lines.begin(), inv.lines.end(), [](const InvoiceLine& l) { return l.kind == "storage"; });
    if (has_storage)
      for (const auto& r : tx.exec_prepared(kVolumeSpans.name, inv.tenant_id, EpochMs(period.begin),
                                            EpochMs(inv.status == "finalized" ? period.end : storage_through)))
        volumes.push_back({r["id"].as<std::string>(), r["name"].as<std::string>(), r["region"].as<std::string>(),
                           r["size_gb"].as<int>(), r["price"].as<std::int64_t>(), *TimeFrom(r["from_ms"]),
                           *TimeFrom(r["to_ms"])});
    out.AddInvoice(s, account(inv.tenant_id), hours, volumes, skus);
  }
  for (const auto& [note_id, invoice_id] : notes) {
    const auto c = credited.find(invoice_id);
    if (c == credited.end()) continue;
    for (const auto& n : c->second.credit_notes)
      if (n.id == note_id) out.AddCreditNote(n, c->second.invoice, account(n.tenant_id));
  }
  return out;
}

}  // namespace spillway::billing
