#include "billing/focus.hpp"

#include <algorithm>
#include <numeric>

#include "core/money.hpp"
#include "core/text.hpp"

namespace spillway::billing {
namespace {

using C = FocusColumn;

constexpr std::int64_t kMicro = 1'000'000;

// FOCUS's date-time format: ISO 8601 in UTC, to the second ("2026-11-01T00:00:00Z").
std::string FocusTime(TimeMs t) { return FormatTime(t).substr(0, 19) + "Z"; }

// "12.500000" (an invoice line's quantity) -> 12500000 micro-units.
std::int64_t MicroUnits(const std::string& text) {
  const auto dot = text.find('.');
  std::int64_t whole = std::stoll(text.substr(0, dot));
  std::string frac = dot == std::string::npos ? "" : text.substr(dot + 1);
  frac.resize(6, '0');
  return whole * kMicro + std::stoll(frac);
}

// The priced part of a usage or storage row: its quantity (micro-units), unit prices (µ$) and
// what they make, exactly.
struct Priced {
  std::int64_t quantity = 0;
  std::int64_t list_price = 0, price = 0;
  Int128 list_pico() const { return static_cast<Int128>(list_price) * quantity; }
  Int128 contracted_pico() const { return static_cast<Int128>(price) * quantity; }
};

void SetPriced(FocusRow& row, const Priced& p, const char* unit) {
  row[C::PricingQuantity] = FormatQuantity(p.quantity);
  row[C::PricingUnit] = unit;
  row[C::ConsumedQuantity] = FormatQuantity(p.quantity);
  row[C::ConsumedUnit] = unit;
  row[C::ListUnitPrice] = FormatMicros(p.list_price);
  row[C::ContractedUnitPrice] = FormatMicros(p.price);
  row[C::ListCost] = FormatPico(p.list_pico());
  row[C::ContractedCost] = FormatPico(p.contracted_pico());
}

// One hour of a line at one price: its quantity in milliseconds of its unit (GPU-ms, GB-ms), the
// price per unit and the list price.
struct Piece {
  TimeMs hour;
  std::int64_t quantity_ms = 0, price = 0, list_price = 0;
};

void SetBilled(FocusRow& row, std::int64_t cents) {
  row[C::BilledCost] = FormatAmount(cents);
  row[C::EffectiveCost] = FormatAmount(cents);  // no commitments to amortize: what is billed
}

}  // namespace

std::vector<std::int64_t> Apportion(std::int64_t total, const std::vector<Int128>& weights) {
  std::vector<std::int64_t> out(weights.size(), 0);
  if (weights.empty()) return out;
  Int128 sum = 0;
  for (const Int128 w : weights) sum += w;
  const std::vector<Int128> even(weights.size(), 1);
  const std::vector<Int128>& w = sum > 0 ? weights : even;
  if (sum <= 0) sum = static_cast<Int128>(weights.size());
  const bool negative = total < 0;
  const Int128 t = negative ? -static_cast<Int128>(total) : static_cast<Int128>(total);
  std::vector<Int128> remainder(w.size());
  Int128 given = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const Int128 exact = t * w[i];
    out[i] = static_cast<std::int64_t>(exact / sum);
    remainder[i] = exact % sum;
    given += out[i];
  }
  std::vector<std::size_t> order(w.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return remainder[a] > remainder[b]; });
  for (std::size_t k = 0; given < t; ++k, ++given) ++out[order[k % order.size()]];
  if (negative)
    for (auto& v : out) v = -v;
  return out;
}

std::vector<HourlyRated> TakeHours(std::vector<HourlyRated> rated, const std::map<PriceKey, std::int64_t>& skip,
                                   const std::optional<std::map<PriceKey, std::int64_t>>& take) {
  std::sort(rated.begin(), rated.end(), [](const HourlyRated& a, const HourlyRated& b) {
    return std::tie(a.market, a.price_micros, a.hour) < std::tie(b.market, b.price_micros, b.hour);
  });
  std::vector<HourlyRated> out;
  std::map<PriceKey, std::int64_t> skipped, taken;
  for (auto r : rated) {
    const PriceKey key{r.market, r.price_micros};
    const auto s = skip.find(key);
    std::int64_t& done = skipped[key];
    if (s != skip.end() && done < s->second) {
      const std::int64_t pass = std::min(r.gpu_ms, s->second - done);
      done += pass;
      r.gpu_ms -= pass;
    }
    if (r.gpu_ms <= 0) continue;
    if (take) {
      const auto t = take->find(key);
      const std::int64_t limit = t == take->end() ? 0 : t->second;
      std::int64_t& got = taken[key];
      r.gpu_ms = std::min(r.gpu_ms, limit - got);
      if (r.gpu_ms <= 0) continue;
      got += r.gpu_ms;
    }
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(), [](const HourlyRated& a, const HourlyRated& b) {
    return std::tie(a.hour, a.market, a.price_micros) < std::tie(b.hour, b.market, b.price_micros);
  });
  return out;
}

const std::array<const char*, kFocusColumns>& FocusColumnNames() {
  static const std::array<const char*, kFocusColumns> names{
      "BilledCost",        "BillingAccountId",   "BillingAccountName", "BillingCurrency",  "BillingPeriodEnd",
      "BillingPeriodStart", "ChargeCategory",    "ChargeClass",        "ChargeDescription", "ChargeFrequency",
      "ChargePeriodEnd",   "ChargePeriodStart",  "ConsumedQuantity",   "ConsumedUnit",     "ContractedCost",
      "ContractedUnitPrice", "EffectiveCost",    "InvoiceId",          "InvoiceIssuerName", "ListCost",
      "ListUnitPrice",     "PricingCategory",    "PricingQuantity",    "PricingUnit",      "ProviderName",
      "PublisherName",     "RegionId",           "RegionName",         "ResourceId",       "ResourceName",
      "ResourceType",      "ServiceCategory",    "ServiceName",        "SkuId",            "SkuPriceId",
      "SubAccountId",      "SubAccountName",     "x_InvoiceNumber",    "x_InvoiceStatus",  "x_Market"};
  return names;
}

std::string FormatPico(Int128 pico) {
  const bool negative = pico < 0;
  unsigned __int128 v = negative ? static_cast<unsigned __int128>(-(pico + 1)) + 1 : static_cast<unsigned __int128>(pico);
  constexpr std::uint64_t kPico = 1'000'000'000'000ULL;
  std::string frac = std::to_string(static_cast<std::uint64_t>(v % kPico));
  frac.insert(0, 12 - frac.size(), '0');
  while (!frac.empty() && frac.back() == '0') frac.pop_back();
  v /= kPico;
  std::string whole;
  do {
    whole.insert(whole.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v > 0);
  std::string out = (negative ? "-" : "") + whole + (frac.empty() ? "" : "." + frac);
  return out == "-0" ? "0" : out;
}

FocusExport::FocusExport(const Month& period, std::string issuer_name, RowSink sink)
    : period_(period), issuer_(issuer_name.empty() ? "Spillway" : std::move(issuer_name)), sink_(std::move(sink)) {}

void FocusExport::Emit(const FocusRow& row) {
  if (sink_) sink_(row);
  else rows_.push_back(row);
}

FocusRow FocusExport::Base(const FocusAccount& account, const std::string& invoice_id,
                           const std::optional<std::string>& number, const std::string& status) const {
  FocusRow row;
  row[C::BillingAccountId] = account.tenant_id;
  row[C::BillingAccountName] = account.name;
  row[C::SubAccountId] = account.tenant_id;
  row[C::SubAccountName] = account.name;
  row[C::BillingCurrency] = "USD";
  row[C::BillingPeriodStart] = FocusTime(period_.begin);
  row[C::BillingPeriodEnd] = FocusTime(period_.end);
  row[C::InvoiceId] = invoice_id;
  row[C::x_InvoiceNumber] = number;
  row[C::x_InvoiceStatus] = status;
  row[C::InvoiceIssuerName] = issuer_;
  row[C::ProviderName] = issuer_;
  row[C::PublisherName] = issuer_;
  return row;
}

void FocusExport::AddInvoice(const StoredInvoice& s, const FocusAccount& account, const HoursOf& hours,
                             const std::vector<VolumeSpan>& volumes, const std::map<std::string, InstanceSku>& skus) {
  AddInvoice(
      s, account,
      [&hours](const std::string& period, const std::string& instance, const std::string& market) {
        const auto found = hours.find({period, instance, market});
        return found == hours.end() ? std::vector<HourlyRated>{} : found->second;
      },
      volumes, skus);
}

void FocusExport::AddInvoice(const StoredInvoice& s, const FocusAccount& account, const HoursFor& hours_for,
                             const std::vector<VolumeSpan>& volumes, const std::map<std::string, InstanceSku>& skus) {
  const Invoice& inv = s.invoice;
  const FocusRow base = Base(account, inv.id, inv.number, inv.status);
  const Month month = *ParseMonth(inv.period);
  const std::int64_t month_ms = DaysInMonth(inv.period) * kMsPerDay;
  Int128 list_pico = 0, contracted_pico = 0;  // the invoice's, for its tax row

  // `row` is the line's, its priced and period fields set again for each of its hours (an hour's
  // row costs no copy of the line's other fields).
  const auto emit = [&](FocusRow& row, std::int64_t cents, const Priced& p, TimeMs from, TimeMs to) {
    SetBilled(row, cents);
    SetPriced(row, p, row[C::ResourceType] == "Volume" ? "GB-Months" : "GPU-Hours");
    list_pico += p.list_pico();
    contracted_pico += p.contracted_pico();
    row[C::ChargePeriodStart] = FocusTime(from);
    row[C::ChargePeriodEnd] = FocusTime(to);
    Emit(row);
  };
  // A line over its hours: its amount shared by their exact values (quantity × price), each hour
  // priced per unit of `unit_ms`; with no hours left to show (rows since dropped), one row over
  // `whole` at the line's own quantity and price.
  const auto spread = [&](FocusRow& row, const InvoiceLine& l, const std::vector<Piece>& pieces,
                          std::int64_t unit_ms, const Month& whole) {
    if (pieces.empty()) {
      const std::int64_t price = l.unit_price_micros.value_or(0);
      emit(row, l.amount_cents, Priced{MicroUnits(l.quantity), price, price}, whole.begin, whole.end);
      return;
    }
    std::vector<Int128> weights;
    for (const auto& pc : pieces) weights.push_back(static_cast<Int128>(pc.quantity_ms) * pc.price);
    const auto cents = Apportion(l.amount_cents, weights);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      const auto& pc = pieces[i];
      const Priced p{static_cast<std::int64_t>(DivideHalfEven(static_cast<Int128>(pc.quantity_ms) * kMicro, unit_ms)),
                     pc.list_price, pc.price};
      emit(row, cents[i], p, pc.hour, pc.hour + std::chrono::hours(1));
    }
  };

  for (const InvoiceLine& l : inv.lines) {
    FocusRow row = base;
    row[C::ChargeDescription] = l.description;
    if (l.kind == "usage" || l.kind == "late_usage") {
      const std::string usage_period = l.usage_period.value_or(inv.period);
      const std::string instance = l.instance_id.value_or("");
      const std::string market = l.market.value_or("on_demand");
      const auto sku = skus.find(instance);
      row[C::ChargeCategory] = "Usage";
      if (l.kind == "late_usage") row[C::ChargeClass] = "Correction";
      row[C::ChargeFrequency] = "Usage-Based";
      row[C::ServiceName] = "GPU Instances";
      row[C::ServiceCategory] = "Compute";
      row[C::ResourceId] = instance;
      row[C::ResourceType] = "GPU Instance";
      row[C::x_Market] = market;
      row[C::PricingCategory] = market == "spot" ? "Dynamic" : "Standard";
      if (sku != skus.end()) {
        const InstanceSku& k = sku->second;
        row[C::ResourceName] = k.name && !k.name->empty() ? *k.name : instance;
        row[C::RegionId] = k.region;
        row[C::RegionName] = k.region;
        row[C::SkuId] = "gpu-hour:" + k.gpu_model;  // one SKU; on-demand and spot are two prices of it
        row[C::SkuPriceId] = market == "spot" ? "gpu-hour:" + k.gpu_model + ":spot:" + k.region
                                              : "gpu-hour:" + k.gpu_model + ":on-demand";
      }
      std::vector<Piece> pieces;
      for (const auto& h : hours_for(usage_period, instance, market))
        pieces.push_back({h.hour, h.gpu_ms, h.price_micros, h.list_price_micros.value_or(h.price_micros)});
      const Month q = *ParseMonth(usage_period);
      spread(row, l, pieces, kMsPerHour, q);
    } else if (l.kind == "storage") {
      const std::string volume = l.volume_id.value_or("");
      row[C::ChargeCategory] = "Usage";
      row[C::ChargeFrequency] = "Usage-Based";
      row[C::ServiceName] = "Volumes";
      row[C::ServiceCategory] = "Storage";
      row[C::ResourceId] = volume;
      row[C::ResourceType] = "Volume";
      row[C::PricingCategory] = "Standard";
      row[C::SkuId] = "storage-gb-month";
      row[C::SkuPriceId] = "storage-gb-month:standard";
      std::vector<Piece> pieces;
      for (const auto& v : volumes) {
        if (v.volume_id != volume) continue;
        row[C::ResourceName] = v.name;
        row[C::RegionId] = v.region;
        row[C::RegionName] = v.region;
        for (TimeMs h = FromEpochMs(EpochMs(v.from) / kMsPerHour * kMsPerHour); h < v.to; h += std::chrono::hours(1)) {
          const TimeMs a = std::max(h, v.from), b = std::min(h + std::chrono::hours(1), v.to);
          if (b > a) pieces.push_back({h, v.size_gb * (b - a).count(), v.price_micros, v.price_micros});
        }
      }
      std::sort(pieces.begin(), pieces.end(), [](const Piece& x, const Piece& y) {
        return std::tie(x.hour, x.price) < std::tie(y.hour, y.price);
      });
      spread(row, l, pieces, month_ms, month);
    } else if (l.kind == "tax") {
      row[C::ChargeCategory] = "Tax";
      row[C::ChargeFrequency] = "Usage-Based";
      row[C::ServiceName] = "GPU Cloud";
      row[C::ServiceCategory] = "Compute";
      row[C::ChargeDescription] = "tax " + l.quantity + " %";
      // The tax's list and contracted costs are the rate's share of the invoice's.
      SetBilled(row, l.amount_cents);
      row[C::ListCost] = FormatPico(DivideHalfEven(list_pico * inv.tax_rate_bp, 10'000));
      row[C::ContractedCost] = FormatPico(DivideHalfEven(contracted_pico * inv.tax_rate_bp, 10'000));
      row[C::ChargePeriodStart] = FocusTime(month.begin);
      row[C::ChargePeriodEnd] = FocusTime(month.end);
      Emit(row);
    }
  }
}

void FocusExport::AddCreditNote(const CreditNote& note, const Invoice& credited, const FocusAccount& account) {
  const Month month = *ParseMonth(credited.period);
  FocusRow row = Base(account, note.id, note.number, "finalized");
  row[C::ChargeClass] = "Correction";
  row[C::ServiceName] = "GPU Cloud";
  row[C::ServiceCategory] = "Compute";
  row[C::ChargePeriodStart] = FocusTime(month.begin);
  row[C::ChargePeriodEnd] = FocusTime(month.end);
  const std::string of = "credit note " + note.number + " on invoice " + credited.number.value_or(credited.id);
  FocusRow credit = row;
  credit[C::ChargeCategory] = "Credit";
  credit[C::ChargeFrequency] = "One-Time";
  credit[C::ChargeDescription] = of + ": " + note.reason;
  SetBilled(credit, -note.subtotal_cents);
  credit[C::ListCost] = FormatAmount(-note.subtotal_cents);
  credit[C::ContractedCost] = FormatAmount(-note.subtotal_cents);
  Emit(credit);
  FocusRow tax = row;
  tax[C::ChargeCategory] = "Tax";
  tax[C::ChargeFrequency] = "One-Time";
  tax[C::ChargeDescription] = of + ": tax " + FormatRate(credited.tax_rate_bp) + " %";
  SetBilled(tax, -note.tax_cents);
  tax[C::ListCost] = FormatAmount(-note.tax_cents);
  tax[C::ContractedCost] = FormatAmount(-note.tax_cents);
  Emit(tax);
}

std::string FocusExport::CsvHeader() {
  const auto& names = FocusColumnNames();
  std::string out;
  for (int c = 0; c < kFocusColumns; ++c) out.append(c ? "," : "").append(names[c]);
  out += "\r\n";
  return out;
}

void FocusExport::AppendCsv(std::string& out, const FocusRow& row) {
  for (int c = 0; c < kFocusColumns; ++c) {
    if (c) out += ',';
    const auto& v = row.values[c];
    if (!v) continue;
    const auto col = static_cast<FocusColumn>(c);
    const bool chosen = col == C::ChargeDescription || col == C::ResourceName || col == C::BillingAccountName ||
                        col == C::SubAccountName;
    AppendCsvField(out, *v, chosen);
  }
  out += "\r\n";
}

std::string FocusExport::Csv() const {
  std::string out = CsvHeader();
  for (const FocusRow& row : rows_) AppendCsv(out, row);
  return out;
}

}  // namespace spillway::billing
