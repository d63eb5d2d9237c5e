#include "billing/invoice.hpp"

#include <boost/json.hpp>

#include <map>
#include <stdexcept>

#include "core/json.hpp"
#include "core/money.hpp"

namespace spillway::billing {
namespace {

std::string Describe(const InstanceFacts* f, const std::string& instance_id) {
  if (!f) return instance_id;
  std::string out = f->instance_type + " (" + f->gpu_model + ") " + instance_id;
  if (f->name && !f->name->empty()) out += " \"" + *f->name + "\"";
  return out;
}

boost::json::value Opt(const std::optional<std::string>& s) {
  if (!s) return nullptr;
  return boost::json::value(*s);
}

}  // namespace

boost::json::object PartyJson(const Party& p) {
  return {{"legal_name", p.legal_name}, {"address", p.address}, {"tax_id", p.tax_id}, {"email", p.email}};
}

std::string FormatInUnits(std::int64_t quantity_ms, std::int64_t unit_ms) {
  return FormatQuantity(static_cast<std::int64_t>(DivideHalfEven(static_cast<Int128>(quantity_ms) * 1'000'000, unit_ms)));
}

std::string FormatGpuHours(std::int64_t gpu_ms) { return FormatInUnits(gpu_ms, kMsPerHour); }

bool Invoice::Empty() const {
  for (const auto& l : lines)
    if (l.kind != "tax") return false;
  return true;
}

std::string FormatQuantity(std::int64_t micro_units) {
  const bool negative = micro_units < 0;
  const std::uint64_t v = negative ? 0 - static_cast<std::uint64_t>(micro_units) : static_cast<std::uint64_t>(micro_units);
  std::string frac = std::to_string(v % 1'000'000);
  frac.insert(0, 6 - frac.size(), '0');
  return (negative ? "-" : "") + std::to_string(v / 1'000'000) + "." + frac;
}

std::string FormatRate(int basis_points) { return FormatAmount(basis_points); }

std::int64_t TaxOf(std::int64_t subtotal_cents, int basis_points) {
  return static_cast<std::int64_t>(DivideHalfEven(static_cast<Int128>(subtotal_cents) * basis_points, 10'000));
}

std::vector<InvoiceLine> UsageLines(const std::vector<RatedUsage>& rows, const std::vector<InstanceFacts>& facts,
                                    const std::optional<std::string>& late_from) {
  std::map<std::string, const InstanceFacts*> by_id;
  for (const auto& f : facts) by_id[f.instance_id] = &f;
  std::vector<InvoiceLine> out;
  for (const UsageLine& u : RateUsage(rows)) {
    const auto it = by_id.find(u.instance_id);
    InvoiceLine l;
    l.kind = late_from ? "late_usage" : "usage";
    l.description = std::string(late_from ? "usage from " + *late_from + ": " : "") +
                    Describe(it == by_id.end() ? nullptr : it->second, u.instance_id) + ", " +
                    (u.market == "spot" ? "spot" : "on-demand");
    if (u.unpriced_gpu_ms > 0)
      l.description += " (" + FormatGpuHours(u.unpriced_gpu_ms) + " GPU-hours had no price in effect and are not billed)";
    if (u.unmetered_gpu_ms > 0)
      l.description += " (" + FormatGpuHours(u.unmetered_gpu_ms) +
                       " GPU-hours of it were held but never metered, billed at the price in effect at each hour's start)";
    l.instance_id = u.instance_id;
    l.market = u.market;
    l.usage_period = late_from;
    l.quantity = FormatQuantity(u.micro_gpu_hours());
    l.unit = "gpu_hour";
    l.unit_price_micros = u.average_price_micros();
    l.amount_cents = u.amount.Cents();
    out.push_back(std::move(l));
  }
  return out;
}

std::vector<InvoiceLine> StorageLines(const std::vector<StorageUsage>& rows, int month_days) {
  struct Acc {
    const StorageUsage* first = nullptr;
    std::int64_t gb_ms = 0;
    ExactAmount amount;
  };
  std::map<std::string, Acc> by_volume;
  for (const auto& r : rows) {
    auto [it, fresh] = by_volume.try_emplace(r.volume_id, Acc{&r, 0, ExactAmount::Storage(month_days)});
    it->second.gb_ms += r.gb_ms;
    it->second.amount.Add(r.gb_ms, r.price_micros);
  }
  std::vector<InvoiceLine> out;
  const std::int64_t month_ms = month_days * kMsPerDay;
  for (const auto& [id, a] : by_volume) {
    if (a.gb_ms <= 0) continue;
    InvoiceLine l;
    l.kind = "storage";
    l.description = "volume " + id + " \"" + a.first->name + "\", " + std::to_string(a.first->size_gb) + " GB";
    l.volume_id = id;
    l.quantity = FormatInUnits(a.gb_ms, month_ms);
    l.unit = "gb_month";
    // amount / GB-months = (numerator / month_ms) / (gb_ms / month_ms) = numerator / gb_ms
    l.unit_price_micros = static_cast<std::int64_t>(DivideHalfEven(a.amount.numerator(), a.gb_ms));
    l.amount_cents = a.amount.Cents();
    out.push_back(std::move(l));
  }
  return out;
}

void Total(Invoice& invoice) {
  std::erase_if(invoice.lines, [](const InvoiceLine& l) { return l.kind == "tax"; });
  std::int64_t subtotal = 0;
  for (const auto& l : invoice.lines)
    if (__builtin_add_overflow(subtotal, l.amount_cents, &subtotal)) throw std::overflow_error("an invoice beyond int64 cents");
  invoice.subtotal_cents = subtotal;
  invoice.tax_cents = TaxOf(subtotal, invoice.tax_rate_bp);
  invoice.total_cents = subtotal + invoice.tax_cents;
  InvoiceLine tax;
  tax.kind = "tax";
  tax.description = "tax at " + FormatRate(invoice.tax_rate_bp) + "% of " + FormatAmount(subtotal);
  tax.quantity = FormatRate(invoice.tax_rate_bp);
  tax.unit = "percent";
  tax.amount_cents = invoice.tax_cents;
  invoice.lines.push_back(std::move(tax));
}

std::string CanonicalInvoiceJson(const Invoice& inv) {
  boost::json::array lines;
  int position = 0;
  for (const auto& l : inv.lines) {
    boost::json::object o{{"position", ++position},
                          {"kind", l.kind},
                          {"description", l.description},
                          {"instance_id", Opt(l.instance_id)},
                          {"volume_id", Opt(l.volume_id)},
                          {"market", Opt(l.market)},
                          {"usage_period", Opt(l.usage_period)},
                          {"quantity", l.quantity},
                          {"unit", l.unit},
                          {"amount", FormatAmount(l.amount_cents)}};
    o["unit_price"] = l.unit_price_micros ? boost::json::value(FormatMicros(*l.unit_price_micros)) : nullptr;
    lines.push_back(std::move(o));
  }
  boost::json::array behind;
  for (const auto& h : inv.hosts_behind) behind.push_back(boost::json::value(h));
  boost::json::object o{{"id", inv.id},
                        {"tenant_id", inv.tenant_id},
                        {"period", inv.period},
                        {"number", Opt(inv.number)},
                        {"currency", inv.currency},
                        {"lines", std::move(lines)},
                        {"subtotal", FormatAmount(inv.subtotal_cents)},
                        {"tax_rate_percent", FormatRate(inv.tax_rate_bp)},
                        {"tax", FormatAmount(inv.tax_cents)},
                        {"total", FormatAmount(inv.total_cents)},
                        {"coverage", Opt(inv.coverage)},
                        {"closed_incomplete", inv.closed_incomplete},
                        {"hosts_behind", std::move(behind)},
                        {"buyer", PartyJson(inv.buyer)},
                        {"issuer", PartyJson(inv.issuer)}};
  o["usage_complete_through"] =
      inv.usage_complete_through ? boost::json::value(FormatTime(*inv.usage_complete_through)) : nullptr;
  o["finalized_at"] = inv.finalized_at ? boost::json::value(FormatTime(*inv.finalized_at)) : nullptr;
  return CanonicalJson(o);
}

std::optional<CreditSplit> SplitCredit(std::int64_t subtotal_cents, int tax_rate_bp, std::int64_t credited_cents,
                                       std::int64_t credited_tax_cents, std::int64_t amount_cents) {
  if (amount_cents <= 0 || credited_cents < 0 || amount_cents > subtotal_cents - credited_cents) return std::nullopt;
  CreditSplit s;
  s.subtotal_cents = amount_cents;
  s.tax_cents = TaxOf(credited_cents + amount_cents, tax_rate_bp) - credited_tax_cents;
  if (s.tax_cents < 0) s.tax_cents = 0;  // only with credited tax recorded beyond the rule (never by this code)
  return s;
}

std::optional<std::string> CoverageText(std::int64_t metered_ms, std::int64_t held_ms) {
  if (held_ms <= 0) return std::nullopt;
  const std::int64_t ratio = static_cast<std::int64_t>(static_cast<Int128>(metered_ms) * 10'000 / held_ms);
  return std::to_string(ratio / 10'000) + "." + [&] {
    std::string f = std::to_string(ratio % 10'000);
    return std::string(4 - f.size(), '0') + f;
  }();
}

int DaysInMonth(const std::string& period) {
  const auto m = ParseMonth(period);
  if (!m) throw std::invalid_argument("not a month: " + period);
  return static_cast<int>((EpochMs(m->end) - EpochMs(m->begin)) / kMsPerDay);
}

}  // namespace spillway::billing
