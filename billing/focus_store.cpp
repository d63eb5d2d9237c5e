// What the FOCUS export reads (billing/focus.hpp): a period's invoices, the hourly rated rows each
// line billed, the volume spans behind storage lines, and the credit notes issued in the period.
#include <algorithm>
#include <memory>
#include <set>
#include <string_view>

#include "billing/focus.hpp"
#include "billing/storage_sql.hpp"
#include "core/db.hpp"
#include "core/sql.hpp"

namespace spillway::billing {
namespace {

const Statement kTenantNames{"focus_tenant_names", "SELECT id, name FROM tenants WHERE id = ANY($1::text[])"};
// A tenant-month's priced hourly rows, written once for both readers: the cursor below (its
// tenant and month given as literals: a cursor takes no parameters) and kHourlyOf.
#define SPW_FOCUS_HOURLY_SELECT                                                                              \
  "SELECT instance_id, market, " SPW_EPOCH_MS("hour") " AS hour_ms, price_micros_per_gpu_hour AS price, "    \
  "list_price_micros_per_gpu_hour AS list_price, sum(gpu_ms)::bigint AS gpu_ms FROM usage_rated_hourly "     \
  "WHERE price_micros_per_gpu_hour IS NOT NULL AND "
#define SPW_FOCUS_HOURLY_GROUP \
  " GROUP BY instance_id, market, hour, price_micros_per_gpu_hour, list_price_micros_per_gpu_hour"
// One instance's rows: what a line asks for when its instance comes out of order (the cursor
// serves lines in the order invoices write them).
const Statement kHourlyOf{"focus_hourly_of", SPW_FOCUS_HOURLY_SELECT "tenant_id = $1 AND instance_id = $4 AND hour >= "
                                             SPW_TS(2) " AND hour < " SPW_TS(3) SPW_FOCUS_HOURLY_GROUP};
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

// The columns of kHourlyOf's rows or the cursor's, looked up by name once per result: a month's
// export reads hundreds of thousands of rows.
struct HourlyColumns {
  explicit HourlyColumns(const pqxx::result& r)
      : instance(r.column_number("instance_id")),
        market(r.column_number("market")),
        hour(r.column_number("hour_ms")),
        price(r.column_number("price")),
        list_price(r.column_number("list_price")),
        gpu_ms(r.column_number("gpu_ms")) {}
  pqxx::row::size_type instance, market, hour, price, list_price, gpu_ms;
  HourlyRated From(const pqxx::row& r) const {
    return {r[instance].c_str(), r[market].c_str(), *TimeFrom(r[hour]), r[price].as<std::int64_t>(),
            IntFrom(r[list_price]), r[gpu_ms].as<std::int64_t>()};
  }
};

// One tenant-month's hourly rows, read through a cursor in instance order (bytewise, as invoice
// lines are ordered) a batch at a time, and what finalized invoices billed of it: a line takes its
// instance's rows as the cursor passes them, so a month of any size is never held whole.
class MonthUsage {
 public:
  MonthUsage(Tx& tx, const std::string& tenant_id, const std::string& period)
      : tx_(tx), tenant_(tenant_id), month_(*ParseMonth(period)) {
    for (const auto& r : tx.exec_prepared(kBilledOf.name, tenant_id, period))
      billed_[r["instance_id"].as<std::string>()].push_back(
          {r["invoice_id"].as<std::string>(), {r["market"].as<std::string>(), r["price"].as<std::int64_t>()},
           r["gpu_ms"].as<std::int64_t>()});
  }

  // The rows of `instance` (every market).
  std::vector<HourlyRated> Of(const std::string& instance) {
    std::vector<HourlyRated> out;
    if (!last_.empty() && instance <= last_) {  // asked out of order: read it alone
      const auto rows = tx_.exec_prepared(kHourlyOf.name, tenant_, EpochMs(month_.begin), EpochMs(month_.end), instance);
      const HourlyColumns c(rows);
      for (const auto& r : rows) out.push_back(c.From(r));
      return out;
    }
    last_ = instance;
    if (!cursor_) Open();
    for (;;) {
      if (next_ >= static_cast<int>(batch_.size())) {
        if (done_) break;
        *cursor_ >> batch_;
        next_ = 0;
        if (batch_.empty()) {
          done_ = true;
          break;
        }
        columns_.emplace(batch_);
      }
      const auto row = batch_[next_];
      const std::string_view id = row[columns_->instance].c_str();
      if (id > instance) break;  // a later line's
      if (id == instance) out.push_back(columns_->From(row));
      ++next_;  // this line's, or an instance no line asks for
    }
    return out;
  }

  const std::vector<BilledEntry>* BilledOf(const std::string& instance) const {
    const auto b = billed_.find(instance);
    return b == billed_.end() ? nullptr : &b->second;
  }

 private:
  void Open() {
    cursor_ = std::make_unique<pqxx::icursorstream>(
        tx_,
        SPW_FOCUS_HOURLY_SELECT "tenant_id = " + tx_.quote(tenant_) + " AND hour >= to_timestamp(" +
            std::to_string(EpochMs(month_.begin)) + " / 1000.0) AND hour < to_timestamp(" +
            std::to_string(EpochMs(month_.end)) + " / 1000.0)" SPW_FOCUS_HOURLY_GROUP
            " ORDER BY instance_id COLLATE \"C\", hour",
        "focus_hours", 10'000);
  }

  Tx& tx_;
  std::string tenant_;
  Month month_;
  std::map<std::string, std::vector<BilledEntry>> billed_;  // instance -> in number order
  std::unique_ptr<pqxx::icursorstream> cursor_;
  pqxx::result batch_;
  std::optional<HourlyColumns> columns_;
  int next_ = 0;
  bool done_ = false;
  std::string last_;
};

// The hours of `instance`'s `market` usage (its rows `all`) that invoice `s` billed: after what
// the invoices numbered before it billed; a draft, everything after what any finalized invoice billed.
std::vector<HourlyRated> HoursBilledBy(const StoredInvoice& s, const std::vector<BilledEntry>* billed,
                                       const std::vector<HourlyRated>& all, const std::string& market) {
  std::vector<HourlyRated> rows;
  for (const auto& r : all)
    if (r.market == market) rows.push_back(r);
  std::map<PriceKey, std::int64_t> skip;
  std::optional<std::map<PriceKey, std::int64_t>> take;
  if (s.invoice.status == "finalized") take.emplace();
  bool mine_seen = false;
  if (billed)
    for (const auto& e : *billed) {
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

void WriteFocus(Tx& tx, const Month& period, const std::string& tenant_id, TimeMs now, FocusExport& out) {
  std::vector<std::pair<std::string, std::string>> notes;  // credit note id, invoice id
  for (const auto& r : tx.exec_prepared(kCreditNotesIn.name, EpochMs(period.begin), EpochMs(period.end), tenant_id))
    notes.emplace_back(r["id"].as<std::string>(), r["invoice_id"].as<std::string>());
  std::map<std::string, StoredInvoice> credited;
  for (const auto& [note, invoice] : notes)
    if (!credited.count(invoice))
      if (auto found = FindInvoice(tx, invoice)) credited.emplace(invoice, std::move(*found));

  std::map<std::string, FocusAccount> accounts;  // the tenants named so far
  const auto load_accounts = [&](std::set<std::string> tenants) {
    for (const auto& [id, a] : accounts) tenants.erase(id);
    if (tenants.empty()) return;
    for (const auto& r : tx.exec_prepared(kTenantNames.name, TextArrayLiteral({tenants.begin(), tenants.end()})))
      accounts[r["id"].as<std::string>()] = {r["id"].as<std::string>(), r["name"].as<std::string>()};
  };
  const auto account = [&](const std::string& id) {
    const auto a = accounts.find(id);
    return a == accounts.end() ? FocusAccount{id, id} : a->second;
  };

  // Storage is shown up to where volume metering has measured, or now before its first hour (as
  // drafts bill it).
  const TimeMs storage_through = std::min(period.end, std::max(period.begin, VolumeMeteredThrough(tx, now)));
  InvoiceQuery q;
  q.period = period.Label();
  q.tenant_id = tenant_id;
  q.limit = 100;
  for (;;) {  // a page of invoices at a time
    const auto page = ListInvoices(tx, q);
    const bool more = static_cast<int>(page.size()) == q.limit;
    if (more) q.after = page.back().invoice.period + "/" + page.back().invoice.id;
    std::set<std::string> tenants;
    for (const auto& s : page) tenants.insert(s.invoice.tenant_id);
    load_accounts(std::move(tenants));
    for (const auto& s : page) {
      const Invoice& inv = s.invoice;
      std::map<std::string, std::unique_ptr<MonthUsage>> months;  // usage period -> its usage
      std::set<std::string> instances;
      for (const auto& l : inv.lines)
        if ((l.kind == "usage" || l.kind == "late_usage") && l.instance_id) instances.insert(*l.instance_id);
      const auto hours_for = [&](const std::string& p, const std::string& instance, const std::string& market) {
        auto it = months.find(p);
        if (it == months.end()) it = months.emplace(p, std::make_unique<MonthUsage>(tx, inv.tenant_id, p)).first;
        MonthUsage& u = *it->second;
        return HoursBilledBy(s, u.BilledOf(instance), u.Of(instance), market);
      };
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
      out.AddInvoice(s, account(inv.tenant_id), FocusExport::HoursFor(hours_for), volumes, skus);
    }
    if (!more) break;
  }
  std::set<std::string> note_tenants;
  for (const auto& [id, s] : credited) note_tenants.insert(s.invoice.tenant_id);
  load_accounts(std::move(note_tenants));
  for (const auto& [note_id, invoice_id] : notes) {
    const auto c = credited.find(invoice_id);
    if (c == credited.end()) continue;
    for (const auto& n : c->second.credit_notes)
      if (n.id == note_id) out.AddCreditNote(n, c->second.invoice, account(n.tenant_id));
  }
}

FocusExport ExportFocus(Tx& tx, const Month& period, const std::string& tenant_id, const BillingSettings& settings,
                        TimeMs now) {
  FocusExport out(period, settings.issuer.legal_name);
  WriteFocus(tx, period, tenant_id, now, out);
  return out;
}

}  // namespace spillway::billing
