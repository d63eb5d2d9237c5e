#pragma once
// The FOCUS 1.2 cost export (docs/focus.md): what invoices bill, one row per charge per hour, in the
// FinOps Foundation's columns, with costs. Pure: the store (billing/focus_store.cpp) hands it the
// invoices, the hourly rated rows and volume spans, and this cuts each invoice line into its hours
// so that the hours of a line add up to the line to the cent (largest remainder of their exact
// values), ListCost = ListUnitPrice × PricingQuantity exactly, and the rows of an invoice add up to
// its total.
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "billing/exact_amount.hpp"
#include "billing/invoice.hpp"
#include "billing/invoices.hpp"
#include "core/clock.hpp"
#include "core/db_fwd.hpp"

namespace spillway::billing {

// Shares of `total` (cents, of either sign) in proportion to `weights` (≥ 0), each share the floor
// of its exact value plus one cent to the largest remainders (earliest first on a tie), so the
// shares add up to `total` exactly. All weights zero: even shares the same way.
std::vector<std::int64_t> Apportion(std::int64_t total, const std::vector<Int128>& weights);

// An instance's rated GPU-ms in one hour at one price (usage_rated_hourly, priced rows only).
struct HourlyRated {
  std::string instance_id, market;
  TimeMs hour{};
  std::int64_t price_micros = 0;
  std::optional<std::int64_t> list_price_micros;  // the on-demand book's then (nullopt: none)
  std::int64_t gpu_ms = 0;
};

// (market, price) of an instance's rated rows: what invoice_usage records per instance.
using PriceKey = std::pair<std::string, std::int64_t>;

// The hours of one instance-month's rated rows that one invoice billed: per (market, price), in hour
// order, the first `skip` GPU-ms (what earlier invoices billed of it) are passed over and the next
// `take` GPU-ms kept (nullopt: all the rest, for a draft), the hour at the edge cut.
std::vector<HourlyRated> TakeHours(std::vector<HourlyRated> rated, const std::map<PriceKey, std::int64_t>& skip,
                                   const std::optional<std::map<PriceKey, std::int64_t>>& take);

// What the export knows of an instance: its SKU (gpu_model) and where it ran.
struct InstanceSku {
  std::string instance_id, region, gpu_model, instance_type;
  std::optional<std::string> name;
};

// A volume's life at one storage price within the month: [from, to).
struct VolumeSpan {
  std::string volume_id, name, region;
  int size_gb = 0;
  std::int64_t price_micros = 0;  // per GB-month
  TimeMs from{}, to{};
};

// The FOCUS 1.2 columns written, in order (mandatory, then the conditional ones Spillway meets, then
// Spillway's own x_ columns).
enum class FocusColumn : int {
  BilledCost, BillingAccountId, BillingAccountName, BillingCurrency, BillingPeriodEnd, BillingPeriodStart,
  ChargeCategory, ChargeClass, ChargeDescription, ChargeFrequency, ChargePeriodEnd, ChargePeriodStart,
  ConsumedQuantity, ConsumedUnit, ContractedCost, ContractedUnitPrice, EffectiveCost, InvoiceId,
  InvoiceIssuerName, ListCost, ListUnitPrice, PricingCategory, PricingQuantity, PricingUnit, ProviderName,
  PublisherName, RegionId, RegionName, ResourceId, ResourceName, ResourceType, ServiceCategory, ServiceName,
  SkuId, SkuPriceId, SubAccountId, SubAccountName, x_InvoiceNumber, x_InvoiceStatus, x_Market,
  kCount
};
constexpr int kFocusColumns = static_cast<int>(FocusColumn::kCount);
const std::array<const char*, kFocusColumns>& FocusColumnNames();

// One row: a value per column, nullopt for null (an empty CSV field).
struct FocusRow {
  std::array<std::optional<std::string>, kFocusColumns> values;
  std::optional<std::string>& operator[](FocusColumn c) { return values[static_cast<int>(c)]; }
  const std::optional<std::string>& operator[](FocusColumn c) const { return values[static_cast<int>(c)]; }
};

// A billing account: the tenant (FOCUS's billing account and sub-account both).
struct FocusAccount {
  std::string tenant_id, name;
};

class FocusExport {
 public:
  // Where rows go as they are made: an export of any size passes through one row at a time.
  using RowSink = std::function<void(const FocusRow&)>;
  // The export of `period`'s charges, billed by `issuer` (ProviderName, PublisherName, InvoiceIssuerName),
  // its rows handed to `sink`, or kept (rows(), Csv()) without one.
  FocusExport(const Month& period, std::string issuer_name, RowSink sink = {});

  // An invoice of the period: each usage and late-usage line over the hours `hours_for` gives it
  // (asked once per line, in line order, with its usage period, instance and market), each
  // storage line over its volume's spans cut into hours, and the tax line. A line with no hours
  // to show (rated rows since dropped) is one row over its month.
  using HoursFor = std::function<std::vector<HourlyRated>(const std::string& usage_period, const std::string& instance,
                                                          const std::string& market)>;
  void AddInvoice(const StoredInvoice& s, const FocusAccount& account, const HoursFor& hours_for,
                  const std::vector<VolumeSpan>& volumes, const std::map<std::string, InstanceSku>& skus);
  // The same with every line's hours at hand, by (usage period, instance, market).
  using HoursOf = std::map<std::tuple<std::string, std::string, std::string>, std::vector<HourlyRated>>;
  void AddInvoice(const StoredInvoice& s, const FocusAccount& account, const HoursOf& hours,
                  const std::vector<VolumeSpan>& volumes, const std::map<std::string, InstanceSku>& skus);
  // A credit note issued in the period on `credited` (an earlier month's invoice, or this one's):
  // a Credit row and its Tax row, both corrections.
  void AddCreditNote(const CreditNote& note, const Invoice& credited, const FocusAccount& account);

  const std::vector<FocusRow>& rows() const { return rows_; }
  // RFC 4180 with a header row; nulls as empty fields; CRLF line ends.
  std::string Csv() const;
  // The same, a piece at a time: the header line, and one row's line appended to `out`.
  static std::string CsvHeader();
  static void AppendCsv(std::string& out, const FocusRow& row);

 private:
  void Emit(const FocusRow& row);
  FocusRow Base(const FocusAccount& account, const std::string& invoice_id, const std::optional<std::string>& number,
                const std::string& status) const;
  Month period_;
  std::string issuer_;
  RowSink sink_;
  std::vector<FocusRow> rows_;
};

// A decimal of 10^-12 units (pico-dollars: µ$ × micro-units) written exactly, trailing zeros
// dropped: 3086417500000 -> "3.0864175", -5 × 10^10 -> "-0.05", 0 -> "0".
std::string FormatPico(Int128 pico);

// The export of `period` read in `tx` (a snapshot) at `now`: every invoice of the period (one
// tenant's, or every tenant's for ""), each line cut into the hours it billed, and the credit notes
// issued in it, written to `out` as they are read: what is held at once is a page of invoices and
// a cursor's batch of hourly rows, whatever the month's size.
void WriteFocus(Tx& tx, const Month& period, const std::string& tenant_id, TimeMs now, FocusExport& out);
// The same, kept whole (tests, small periods).
FocusExport ExportFocus(Tx& tx, const Month& period, const std::string& tenant_id, const BillingSettings& settings,
                        TimeMs now);

}  // namespace spillway::billing
