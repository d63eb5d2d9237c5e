// Invoices, period closes, credit notes and billing profiles (docs/architecture.md, "Billing").
#include "apiserver/handlers/invoices.hpp"

#include <boost/json.hpp>

#include <chrono>

#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/billing_metrics.hpp"
#include "apiserver/handlers/common.hpp"
#include "billing/exact_amount.hpp"
#include "billing/focus.hpp"
#include "billing/invoices.hpp"
#include "billing/reports.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"
#include "core/money.hpp"
#include "core/text.hpp"
#include "documents/invoice_pdf.hpp"

namespace spillway::handlers {
namespace {

using billing::CreditNote;
using billing::FormatAmount;
using billing::Invoice;
using billing::InvoiceLine;
using billing::StoredInvoice;

BillingSettings SettingsOf(const Ctx& ctx) {
  return ctx.billing ? ctx.billing->settings() : BillingSettings::From(ctx.config);
}

boost::json::object CreditNoteJson(const CreditNote& n) {
  return {{"id", n.id},
          {"number", n.number},
          {"invoice_id", n.invoice_id},
          {"tenant_id", n.tenant_id},
          {"amount", FormatAmount(n.subtotal_cents)},
          {"tax", FormatAmount(n.tax_cents)},
          {"total", FormatAmount(n.total_cents)},
          {"reason", n.reason},
          {"created_at", FormatTime(n.created_at)}};
}

boost::json::object LineJson(const InvoiceLine& l, int position) {
  boost::json::object o{{"position", position},
                        {"kind", l.kind},
                        {"description", l.description},
                        {"quantity", l.quantity},
                        {"unit", l.unit},
                        {"amount", FormatAmount(l.amount_cents)}};
  if (l.instance_id) o["instance_id"] = *l.instance_id;
  if (l.volume_id) o["volume_id"] = *l.volume_id;
  if (l.market) o["market"] = *l.market;
  if (l.usage_period) o["usage_period"] = *l.usage_period;
  if (l.unit == "gpu_hour") {
    o["gpu_hours"] = l.quantity;
    if (l.unit_price_micros) o["average_price_per_gpu_hour"] = FormatMicros(*l.unit_price_micros);
  }
  if (l.unit == "gb_month") o["gb_months"] = l.quantity;
  if (l.unit_price_micros) o["unit_price"] = FormatMicros(*l.unit_price_micros);
  return o;
}

boost::json::object InvoiceJson(const StoredInvoice& s) {
  const Invoice& i = s.invoice;
  boost::json::array lines, notes, behind;
  int position = 0;
  for (const auto& l : i.lines) lines.push_back(LineJson(l, ++position));
  for (const auto& n : s.credit_notes) notes.push_back(CreditNoteJson(n));
  for (const auto& h : i.hosts_behind) behind.push_back(boost::json::value(h));
  const std::int64_t credited = s.credited_cents();
  boost::json::object o{{"id", i.id},
                        {"tenant_id", i.tenant_id},
                        {"period", i.period},
                        {"status", i.status},
                        {"number", JsonText(i.number)},
                        {"currency", i.currency},
                        {"lines", std::move(lines)},
                        {"subtotal", FormatAmount(i.subtotal_cents)},
                        {"tax_rate_bp", i.tax_rate_bp},
                        {"tax", FormatAmount(i.tax_cents)},
                        {"total", FormatAmount(i.total_cents)},
                        {"credit_notes", std::move(notes)},
                        {"credited", FormatAmount(credited)},
                        {"balance", FormatAmount(i.total_cents - credited)},
                        {"usage_complete_through", JsonTime(i.usage_complete_through)},
                        {"coverage", JsonText(i.coverage)},
                        {"closed_incomplete", i.closed_incomplete},
                        {"hosts_behind", std::move(behind)},
                        {"buyer", billing::PartyJson(i.buyer)},
                        {"issuer", billing::PartyJson(i.issuer)},
                        {"finalized_at", JsonTime(i.finalized_at)},
                        {"sha256", s.sha256.empty() ? boost::json::value(nullptr) : boost::json::value(s.sha256)},
                        {"created_at", FormatTime(s.created_at)},
                        {"updated_at", FormatTime(s.updated_at)}};
  return o;
}

constexpr const char* kCsvHeader =
    "invoice_id,invoice_number,tenant_id,period,status,line,kind,description,instance_id,volume_id,market,"
    "usage_period,quantity,unit,unit_price,amount,currency\r\n";

void AppendCsv(std::string& out, const StoredInvoice& s) {
  const Invoice& i = s.invoice;
  const std::string head = CsvField(i.id) + "," + CsvField(i.number.value_or("")) + "," + CsvField(i.tenant_id) + "," +
                           i.period + "," + i.status + ",";
  int position = 0;
  for (const auto& l : i.lines) {
    out += head + std::to_string(++position) + "," + l.kind + "," + CsvField(l.description, true) + "," +
           CsvField(l.instance_id.value_or("")) + "," + CsvField(l.volume_id.value_or("")) + "," + l.market.value_or("") +
           "," + l.usage_period.value_or("") + "," + l.quantity + "," + l.unit + "," +
           (l.unit_price_micros ? FormatMicros(*l.unit_price_micros) : "") + "," + FormatAmount(l.amount_cents) + "," +
           i.currency + "\r\n";
  }
  for (const auto& n : s.credit_notes)
    out += head + "," + "credit_note," + CsvField(n.number + ": " + n.reason, true) + ",,,,,,,," +
           FormatAmount(-n.total_cents) + "," + i.currency + "\r\n";
}

Reply Csv(std::string body, const std::string& filename) {
  Reply r;
  r.content_type = "text/csv; charset=utf-8";
  r.raw_body = std::move(body);
  r.headers.emplace_back("Content-Disposition", "attachment; filename=\"" + filename + "\"");
  return r;
}

// A CSV export written as it is read, in its own snapshot: `write` appends text to the writer (and
// calls Step() as it goes), which sends it in chunks; never held whole, and stopped at the next
// chunk once the client is gone.
Reply StreamedCsv(const std::string& filename, std::function<void(Tx&, http::BodyWriter&)> write) {
  Reply r;
  r.content_type = "text/csv; charset=utf-8";
  r.headers.emplace_back("Content-Disposition", "attachment; filename=\"" + filename + "\"");
  r.stream_body = [write = std::move(write)](Session& conn, http::BodyStream& stream) {
    http::BodyWriter out(stream);
    ReadSnapshotOn(conn, [&](Tx& tx) { write(tx, out); });
    out.Flush();
  };
  return r;
}

// A billing period as a route takes it: a month as YYYY-MM that Spillway could have billed, from
// the first (billing::FirstBillableMonth) to the current one; any other is 422 naming the field.
std::string PeriodParam(Ctx& ctx, const std::string& text, const char* field) {
  const auto month = ParseMonth(text);
  if (!month) throw InvalidInput(std::string(field) + ": a month as YYYY-MM, such as \"2026-11\"");
  const TimeMs now = ctx.clock.Now();
  const Month current = MonthOf(now);
  if (month->begin > current.begin)
    throw InvalidInput(std::string(field) + ": " + text + " is after the current month, " + current.Label());
  // The first billable month is never after the one before the current (see FirstBillableMonth):
  // only an earlier period needs the database.
  if (month->begin >= MonthOf(current.begin - Millis(1)).begin) return text;
  const Month first = ctx.Read([&](Tx& tx) { return billing::FirstBillableMonth(tx, now); });
  if (month->begin < first.begin)
    throw InvalidInput(std::string(field) + ": " + text + " is before " + first.Label() +
                       ", the first month anything could have been billed");
  return text;
}

// The media type of an invoice's canonical JSON: the exact bytes its sha256 is taken over.
constexpr const char* kCanonicalType = "application/vnd.spillway.invoice.canonical+json";

// ?format= json (the default), csv, pdf or canonical; any other value is 422.
std::string FormatParam(const Ctx& ctx) {
  const std::string f = ctx.Query("format");
  if (!f.empty() && f != "json" && f != "csv" && f != "pdf" && f != "canonical")
    throw InvalidInput("format: json, csv, pdf or canonical");
  return f;
}
bool WantsCanonical(const Ctx& ctx) {
  return ctx.request.Header("accept").find(kCanonicalType) != std::string::npos || FormatParam(ctx) == "canonical";
}
bool WantsCsv(const Ctx& ctx) {
  return ctx.request.Header("accept").find("text/csv") != std::string::npos || ctx.Query("format") == "csv";
}
bool WantsPdf(const Ctx& ctx) {
  return ctx.request.Header("accept").find("application/pdf") != std::string::npos || ctx.Query("format") == "pdf";
}

StoredInvoice Visible(Ctx& ctx, const std::string& id) {
  auto found = ctx.ReadSnapshot([&](Tx& tx) { return billing::FindInvoice(tx, id); });
  // Another tenant's invoice is 404, exactly as one that does not exist.
  if (!found || (ctx.principal.role_bit == kMember && found->invoice.tenant_id != ctx.principal.tenant_id))
    throw ApiError(404, "not_found", "no invoice " + id);
  return std::move(*found);
}

boost::json::object PeriodJson(const PeriodClose& c) {
  boost::json::array behind;
  for (const auto& h : c.hosts_behind) behind.push_back(boost::json::value(h));
  return {{"period", c.period},
          {"closed_at", FormatTime(c.closed_at)},
          {"incomplete", c.incomplete},
          {"hosts_behind", std::move(behind)},
          {"closed_by", c.closed_by},
          {"invoices", c.invoices}};
}

boost::json::object ProfileJson(const billing::BillingProfile& p) {
  boost::json::object o = billing::PartyJson(p.party);
  o["tenant_id"] = p.tenant_id;
  o["tax_rate_bp"] = p.tax_rate_bp;
  o["updated_at"] = JsonTime(p.updated_at);
  return o;
}

// A page of the invoices `q` selects, with ?limit= and ?cursor= ("period/id" of the last one seen).
Reply InvoicePage(Ctx& ctx, billing::InvoiceQuery q) {
  q.limit = ctx.Limit() + 1;
  q.after = ctx.Query("cursor");
  const auto found = ctx.ReadSnapshot([&](Tx& tx) { return billing::ListInvoices(tx, q); });
  return {200, Page(found, q.limit - 1, InvoiceJson,
                    [](const StoredInvoice& s) { return s.invoice.period + "/" + s.invoice.id; })};
}

}  // namespace

Reply ListMyInvoices(Ctx& ctx) {
  // Finance and admins see every tenant's here too (as at /v1/billing/invoices).
  if (ctx.principal.role_bit != kMember) return ListAllInvoices(ctx);
  billing::InvoiceQuery q;
  q.tenant_id = ctx.principal.tenant_id;
  return InvoicePage(ctx, q);
}

Reply GetInvoice(Ctx& ctx) {
  const StoredInvoice s = Visible(ctx, ctx.Param("id"));
  const std::string name = s.invoice.number ? *s.invoice.number : s.invoice.id;
  if (WantsCanonical(ctx)) {
    // What was hashed at finalization, byte for byte: `sha256sum` of this body is the invoice's sha256.
    if (s.canonical.empty())
      throw ApiError(409, "invoice_not_finalized",
                     "invoice " + s.invoice.id + " is a draft: its canonical JSON and SHA-256 exist once its period closes");
    Reply r;
    r.content_type = kCanonicalType;
    r.raw_body = s.canonical;
    r.headers.emplace_back("Content-Disposition", "attachment; filename=\"" + name + ".canonical.json\"");
    return r;
  }
  if (WantsPdf(ctx)) {
    Reply r;
    r.content_type = "application/pdf";
    r.raw_body = documents::InvoicePdf(s);
    r.headers.emplace_back("Content-Disposition", "attachment; filename=\"" + name + ".pdf\"");
    return r;
  }
  if (WantsCsv(ctx)) {
    std::string body = kCsvHeader;
    AppendCsv(body, s);
    return Csv(std::move(body), name + ".csv");
  }
  return {200, InvoiceJson(s)};
}

Reply ListAllInvoices(Ctx& ctx) {
  billing::InvoiceQuery q;
  q.tenant_id = ctx.Query("tenant_id");
  if (q.tenant_id.empty()) q.tenant_id = ctx.Query("tenant");  // docs/architecture.md's first name for it
  if (const std::string p = ctx.Query("period"); !p.empty()) q.period = PeriodParam(ctx, p, "period");
  q.status = ctx.Query("status");
  if (!q.status.empty() && q.status != "draft" && q.status != "finalized")
    throw InvalidInput("status: draft or finalized");
  return InvoicePage(ctx, q);
}

Reply ExportInvoicesCsv(Ctx& ctx) {
  const std::string period = PeriodParam(ctx, ctx.Query("period"), "period");
  return StreamedCsv("invoices-" + period + ".csv", [period](Tx& tx, http::BodyWriter& out) {
    out.text() += kCsvHeader;
    billing::InvoiceQuery q;
    q.period = period;
    q.limit = 100;
    for (;;) {  // a page at a time
      const auto page = billing::ListInvoices(tx, q);
      for (const auto& s : page) {
        AppendCsv(out.text(), s);
        out.Step();
      }
      if (static_cast<int>(page.size()) < q.limit) break;
      q.after = page.back().invoice.period + "/" + page.back().invoice.id;
    }
  });
}

Reply ClosePeriodNow(Ctx& ctx) {
  const std::string period = PeriodParam(ctx, ctx.Param("period"), "period");
  const BillingSettings settings = SettingsOf(ctx);
  const auto start = std::chrono::steady_clock::now();
  PeriodClose c;
  try {
    c = ctx.Write([&](Tx& tx) {
      PeriodClose closed =
          billing::ClosePeriod(tx, *ParseMonth(period), ctx.clock.Now(), settings, "key:" + ctx.principal.key_id);
      if (!closed.already) RecordAudit(tx, ctx.AuditOf("", "billing.period_close", period));
      return closed;
    });
  } catch (const ApiError&) {
    throw;
  } catch (...) {
    if (ctx.billing) ctx.billing->Failed("api_close");
    throw;
  }
  if (ctx.billing)
    ctx.billing->Observe(c, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  boost::json::object o = PeriodJson(c);
  o["already_closed"] = c.already;
  return {200, std::move(o)};
}

Reply ListClosedPeriods(Ctx& ctx) {
  const auto periods = ctx.Read([&](Tx& tx) { return billing::ClosedPeriods(tx); });
  boost::json::array data;
  for (const auto& p : periods) data.push_back(PeriodJson(p));
  return {200, boost::json::object{{"data", std::move(data)}}};
}

Reply CreateCreditNote(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"amount", "reason"});
  const auto amount = billing::ParseAmount(ReqString(body, "amount", 32));
  if (!amount || *amount <= 0 || *amount > billing::kMaxAmountCents)
    throw InvalidInput("amount: a positive USD amount before tax with at most two decimals, such as \"12.50\", of at most " +
                       FormatAmount(billing::kMaxAmountCents));
  const std::string reason = ReqString(body, "reason", 500);
  const std::string id = ctx.Param("id");
  return ctx.Write([&](Tx& tx) {
    const CreditNote n = billing::IssueCreditNote(tx, id, *amount, reason, "key:" + ctx.principal.key_id, ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(n.tenant_id, "billing.credit_note", n.number + " on " + id + " " + FormatAmount(n.total_cents)));
    return Reply{201, CreditNoteJson(n)};
  });
}

Reply GetBillingProfile(Ctx& ctx) {
  const std::string tenant = ctx.Param("id");
  return ctx.Read([&](Tx& tx) {
    RequireTenant(tx, tenant);
    return Reply{200, ProfileJson(billing::ProfileOf(tx, tenant))};
  });
}

Reply SetBillingProfile(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"legal_name", "address", "tax_id", "email", "tax_rate_bp"});
  NoNulls(body);  // a profile is replaced whole: leave a field out for its default, never null
  billing::BillingProfile p;
  p.tenant_id = ctx.Param("id");
  p.party.legal_name = OptString(body, "legal_name", 200).value_or("");
  p.party.address = OptString(body, "address", 500).value_or("");
  p.party.tax_id = OptString(body, "tax_id", 64).value_or("");
  p.party.email = OptString(body, "email", 254).value_or("");
  if (!p.party.email.empty() && p.party.email.find('@') == std::string::npos)
    throw InvalidInput("email: an email address");
  p.tax_rate_bp = static_cast<int>(OptInt(body, "tax_rate_bp", 0, 10'000).value_or(0));
  return ctx.Write([&](Tx& tx) {
    RequireTenant(tx, p.tenant_id);
    billing::SetProfile(tx, p, ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(p.tenant_id, "billing.profile_set",
                                p.tenant_id + " tax_rate_bp=" + std::to_string(p.tax_rate_bp)));
    auto profile = billing::ProfileOf(tx, p.tenant_id);
    return Reply{200, ProfileJson(profile)};
  });
}

}  // namespace spillway::handlers

namespace spillway::handlers {

Reply GetRevenueReport(Ctx& ctx) {
  const std::string period = PeriodParam(ctx, ctx.Query("period"), "period");
  const auto month = *ParseMonth(period);
  const std::int64_t month_ms = EpochMs(month.end) - EpochMs(month.begin);
  const auto gb_months = [month_ms](std::int64_t gb_ms) { return billing::FormatInUnits(gb_ms, month_ms); };
  if (WantsCsv(ctx)) {
    const TimeMs now = ctx.clock.Now();
    // Its rows are the report's aggregates (per region, model and market), read in the stream's
    // own snapshot.
    return StreamedCsv("revenue-" + period + ".csv", [=](Tx& tx, http::BodyWriter& out) {
      const auto report = billing::RevenueOf(tx, month, now);
      std::string& body = out.text();
      body +=
          "period,region,gpu_model,market,gpu_hours_sold,revenue,list_value,spot_discount_given,"
          "spare_gpu_hours_offered,spare_gpu_hours_unsold,storage_gb_months,currency,unmetered_gpu_hours\r\n";
      for (const auto& l : report.lines)
        body += period + "," + CsvField(l.region) + "," + CsvField(l.gpu_model) + "," + l.market + "," + billing::FormatGpuHours(l.gpu_ms) +
                "," + FormatAmount(l.billed.Cents()) + "," + FormatAmount(l.list.Cents()) + "," +
                FormatAmount(l.discount_cents()) + ",,,,USD\r\n";
      for (const auto& p : report.pools)
        body += period + "," + CsvField(p.region) + "," + CsvField(p.gpu_model) + ",spare,,,,," + billing::FormatGpuHours(p.offered_gpu_ms()) +
                "," + billing::FormatGpuHours(p.idle_gpu_ms) + ",,USD\r\n";
      for (const auto& st : report.storage)
        body += period + "," + CsvField(st.region) + ",,storage,," + FormatAmount(st.amount.Cents()) + ",,,,," +
                gb_months(st.gb_ms) + ",USD\r\n";
      // Held and never metered: billed only with billing.unmetered_held_time = bill; list_value is its worth.
      for (const auto& u : report.unmetered)
        body += period + "," + CsvField(u.region) + "," + CsvField(u.gpu_model) + ",unmetered,," + FormatAmount(u.billed.Cents()) + "," +
                FormatAmount(u.list.Cents()) + ",,,,,USD," + billing::FormatGpuHours(u.gpu_ms) + "\r\n";
    });
  }
  const auto report = ctx.ReadSnapshot([&](Tx& tx) { return billing::RevenueOf(tx, month, ctx.clock.Now()); });
  std::int64_t revenue = 0, discount = 0, storage_revenue = 0, offered = 0, sold = 0;
  boost::json::array lines, pools, storage;
  for (const auto& l : report.lines) {
    revenue += l.billed.Cents();
    discount += l.discount_cents();
    lines.push_back({{"region", l.region},
                     {"gpu_model", l.gpu_model},
                     {"market", l.market},
                     {"gpu_hours_sold", billing::FormatGpuHours(l.gpu_ms)},
                     {"revenue", FormatAmount(l.billed.Cents())},
                     {"list_value", FormatAmount(l.list.Cents())},
                     {"spot_discount_given", FormatAmount(l.discount_cents())},
                     {"unpriced_gpu_hours", billing::FormatGpuHours(l.unpriced_gpu_ms)}});
  }
  for (const auto& p : report.pools) {
    offered += p.offered_gpu_ms();
    sold += p.spot_sold_gpu_ms;
    pools.push_back({{"region", p.region},
                     {"gpu_model", p.gpu_model},
                     {"spare_gpu_hours_offered", billing::FormatGpuHours(p.offered_gpu_ms())},
                     {"spare_gpu_hours_sold", billing::FormatGpuHours(p.spot_sold_gpu_ms)},
                     {"spare_gpu_hours_unsold", billing::FormatGpuHours(p.idle_gpu_ms)}});
  }
  for (const auto& st : report.storage) {
    storage_revenue += st.amount.Cents();
    storage.push_back({{"region", st.region}, {"gb_months", gb_months(st.gb_ms)}, {"revenue", FormatAmount(st.amount.Cents())}});
  }
  boost::json::array unmetered;
  std::int64_t unmetered_ms = 0, unmetered_list = 0;
  for (const auto& u : report.unmetered) {
    unmetered_ms += u.gpu_ms;
    unmetered_list += u.list.Cents();
    unmetered.push_back({{"region", u.region},
                         {"gpu_model", u.gpu_model},
                         {"unmetered_gpu_hours", billing::FormatGpuHours(u.gpu_ms)},
                         {"billed", FormatAmount(u.billed.Cents())},
                         {"list_value", FormatAmount(u.list.Cents())}});
  }
  return {200, boost::json::object{{"period", period},
                                   {"currency", "USD"},
                                   {"closed", report.closed},
                                   {"usage", std::move(lines)},
                                   {"spare", std::move(pools)},
                                   {"storage", std::move(storage)},
                                   {"unmetered", std::move(unmetered)},
                                   {"totals",
                                    {{"gpu_revenue", FormatAmount(revenue)},
                                     {"spot_discount_given", FormatAmount(discount)},
                                     {"storage_revenue", FormatAmount(storage_revenue)},
                                     {"revenue", FormatAmount(revenue + storage_revenue)},
                                     {"unmetered_gpu_hours", billing::FormatGpuHours(unmetered_ms)},
                                     {"unmetered_list_value", FormatAmount(unmetered_list)},
                                     {"spare_gpu_hours_offered", billing::FormatGpuHours(offered)},
                                     {"spare_gpu_hours_sold", billing::FormatGpuHours(sold)}}}}};
}

namespace {

Reply FocusCsv(Ctx& ctx, const std::string& tenant_id) {
  const std::string period = PeriodParam(ctx, ctx.Query("period"), "period");
  const Month month = *ParseMonth(period);
  const BillingSettings settings = SettingsOf(ctx);
  const TimeMs now = ctx.clock.Now();
  return StreamedCsv("focus-" + (tenant_id.empty() ? "" : tenant_id + "-") + period + ".csv",
                     [=](Tx& tx, http::BodyWriter& out) {
                       out.text() += billing::FocusExport::CsvHeader();
                       billing::FocusExport focus(month, settings.issuer.legal_name, [&out](const billing::FocusRow& row) {
                         billing::FocusExport::AppendCsv(out.text(), row);
                         out.Step();
                       });
                       billing::WriteFocus(tx, month, tenant_id, now, focus);
                     });
}

}  // namespace

Reply ExportFocusAll(Ctx& ctx) {
  std::string tenant = ctx.Query("tenant_id");
  if (tenant.empty()) tenant = ctx.Query("tenant");
  return FocusCsv(ctx, tenant);
}

Reply ExportFocusOwn(Ctx& ctx) { return FocusCsv(ctx, ctx.principal.tenant_id); }

}  // namespace spillway::handlers
