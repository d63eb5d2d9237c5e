#include "tests/support/focus_check.hpp"

#include <algorithm>
#include <ctime>
#include <regex>
#include <set>
#include <stdexcept>

namespace spillway::test {
namespace {

using Int128 = __int128;

const std::regex kDecimal(R"(-?[0-9]+(\.[0-9]+)?)");
const std::regex kDateTime(R"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)");

// The FOCUS 1.2 mandatory columns, and the conditional ones Spillway meets (issue #20).
const std::vector<std::string> kMandatory = {
    "BilledCost",        "EffectiveCost",     "ListCost",          "ContractedCost",   "BillingAccountId",
    "BillingAccountName", "BillingCurrency",  "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart",
    "ChargePeriodEnd",   "ChargeCategory",    "ChargeClass",       "ChargeDescription", "PricingQuantity",
    "PricingUnit",       "ServiceName",       "ServiceCategory",   "ProviderName",     "PublisherName",
    "InvoiceIssuerName"};
const std::vector<std::string> kConditional = {
    "ResourceId",   "ResourceName", "RegionId",         "RegionName",          "SkuId",
    "SkuPriceId",   "PricingCategory", "ListUnitPrice", "ContractedUnitPrice", "ConsumedQuantity",
    "ConsumedUnit", "SubAccountId", "SubAccountName",   "InvoiceId"};
const std::set<std::string> kNotNull = {"BilledCost",       "EffectiveCost",      "ListCost",
                                        "ContractedCost",   "BillingAccountId",   "BillingCurrency",
                                        "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart",
                                        "ChargePeriodEnd",  "ChargeCategory",     "ServiceName",
                                        "ServiceCategory",  "ProviderName",       "PublisherName",
                                        "InvoiceIssuerName"};
const std::set<std::string> kDecimals = {"BilledCost",    "EffectiveCost",       "ListCost",
                                         "ContractedCost", "PricingQuantity",    "ConsumedQuantity",
                                         "ListUnitPrice", "ContractedUnitPrice"};
const std::set<std::string> kDateTimes = {"BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart",
                                          "ChargePeriodEnd"};
const std::set<std::string> kServiceCategories = {
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases", "Developer Tools",
    "Multicloud", "Identity", "Integration", "Internet of Things", "Management and Governance", "Media",
    "Migration", "Mobile", "Networking", "Security", "Storage", "Web", "Other"};

// A decimal as 10^-12 units, exactly (no more than 12 decimals).
Int128 Pico(const std::string& s) {
  const bool neg = !s.empty() && s[0] == '-';
  const std::string t = neg ? s.substr(1) : s;
  const auto dot = t.find('.');
  std::string frac = dot == std::string::npos ? "" : t.substr(dot + 1);
  if (frac.size() > 12) throw std::invalid_argument("more than 12 decimals: " + s);
  frac.resize(12, '0');
  Int128 v = 0;
  for (char c : t.substr(0, dot)) v = v * 10 + (c - '0');
  for (char c : frac) v = v * 10 + (c - '0');
  return neg ? -v : v;
}
// A unit price or quantity with at most six decimals, as 10^-6 units.
Int128 Micro(const std::string& s) {
  const Int128 p = Pico(s);
  if (p % 1'000'000 != 0) throw std::invalid_argument("more than 6 decimals: " + s);
  return p / 1'000'000;
}

std::int64_t Seconds(const std::string& t) {
  std::tm tm{};
  tm.tm_year = std::stoi(t.substr(0, 4)) - 1900;
  tm.tm_mon = std::stoi(t.substr(5, 2)) - 1;
  tm.tm_mday = std::stoi(t.substr(8, 2));
  tm.tm_hour = std::stoi(t.substr(11, 2));
  tm.tm_min = std::stoi(t.substr(14, 2));
  tm.tm_sec = std::stoi(t.substr(17, 2));
  return timegm(&tm);
}

}  // namespace

std::vector<std::vector<std::string>> ParseCsv(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else if (c == '"') quoted = false;
      else field += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      row.push_back(field), field.clear();
    } else if (c == '\r') {
    } else if (c == '\n') {
      row.push_back(field), field.clear();
      rows.push_back(row), row.clear();
    } else {
      field += c;
    }
  }
  return rows;
}

FocusRows ParseFocus(const std::string& csv) {
  FocusRows out;
  const auto rows = ParseCsv(csv);
  if (rows.empty()) return out;
  out.header = rows[0];
  for (std::size_t i = 1; i < rows.size(); ++i) {
    std::map<std::string, std::string> r;
    for (std::size_t c = 0; c < out.header.size() && c < rows[i].size(); ++c) r[out.header[c]] = rows[i][c];
    out.rows.push_back(std::move(r));
  }
  return out;
}

std::int64_t CentsOf(const std::string& decimal) {
  const Int128 p = Pico(decimal);
  if (p % 10'000'000'000 != 0) throw std::invalid_argument("not whole cents: " + decimal);
  return static_cast<std::int64_t>(p / 10'000'000'000);
}

std::map<std::string, std::int64_t> BilledCentsByInvoice(const FocusRows& focus) {
  std::map<std::string, std::int64_t> out;
  for (const auto& r : focus.rows) out[r.at("InvoiceId")] += CentsOf(r.at("BilledCost"));
  return out;
}

std::vector<std::string> FocusViolations(const FocusRows& focus) {
  std::vector<std::string> v;
  const std::set<std::string> have(focus.header.begin(), focus.header.end());
  for (const auto* list : {&kMandatory, &kConditional})
    for (const auto& c : *list)
      if (!have.count(c)) v.push_back("column " + c + " missing");
  for (const auto& c : focus.header)
    if (c.rfind("x_", 0) != 0 && !std::count(kMandatory.begin(), kMandatory.end(), c) &&
        !std::count(kConditional.begin(), kConditional.end(), c) && c != "ChargeFrequency" && c != "ResourceType")
      v.push_back("column " + c + " is not FOCUS's and has no x_ prefix");
  if (!v.empty()) return v;

  int n = 0;
  for (const auto& r : focus.rows) {
    const std::string at = "row " + std::to_string(++n) + ": ";
    const auto null = [&](const std::string& c) { return r.at(c).empty(); };
    const auto bad = [&](const std::string& what) { v.push_back(at + what); };
    bool typed = true;
    for (const auto& c : kNotNull)
      if (null(c)) bad(c + " is null"), typed = false;
    for (const auto& c : kDecimals)
      if (!null(c) && !std::regex_match(r.at(c), kDecimal)) bad(c + " " + r.at(c) + " is not a decimal"), typed = false;
    for (const auto& c : kDateTimes)
      if (!null(c) && !std::regex_match(r.at(c), kDateTime)) bad(c + " " + r.at(c) + " is not a UTC date-time"), typed = false;
    if (!typed) continue;
    try {

    const std::string category = r.at("ChargeCategory"), klass = r.at("ChargeClass");
    const bool correction = klass == "Correction";
    if (!std::set<std::string>{"Usage", "Purchase", "Tax", "Credit", "Adjustment"}.count(category))
      bad("ChargeCategory " + category);
    if (!klass.empty() && !correction) bad("ChargeClass " + klass);
    if (!kServiceCategories.count(r.at("ServiceCategory"))) bad("ServiceCategory " + r.at("ServiceCategory"));
    if (!null("PricingCategory") &&
        !std::set<std::string>{"Standard", "Dynamic", "Committed", "Other"}.count(r.at("PricingCategory")))
      bad("PricingCategory " + r.at("PricingCategory"));
    if (have.count("ChargeFrequency") && !null("ChargeFrequency") &&
        !std::set<std::string>{"One-Time", "Recurring", "Usage-Based"}.count(r.at("ChargeFrequency")))
      bad("ChargeFrequency " + r.at("ChargeFrequency"));
    if (!std::regex_match(r.at("BillingCurrency"), std::regex("[A-Z]{3}"))) bad("BillingCurrency " + r.at("BillingCurrency"));

    // Nulls by ChargeCategory and ChargeClass.
    if (category == "Tax")
      for (const char* c : {"PricingQuantity", "PricingUnit", "ListUnitPrice", "SkuId", "SkuPriceId", "PricingCategory"})
        if (!null(c)) bad(std::string(c) + " must be null on a Tax row");
    if ((category == "Usage" || category == "Purchase") && !correction)
      for (const char* c : {"PricingQuantity", "PricingUnit", "ListUnitPrice", "ContractedUnitPrice", "SkuId",
                            "SkuPriceId", "PricingCategory"})
        if (null(c)) bad(std::string(c) + " must not be null on a " + category + " row");
    if (category == "Usage" && !correction && (null("ConsumedQuantity") || null("ConsumedUnit")))
      bad("ConsumedQuantity/ConsumedUnit must not be null on a Usage row");
    if (category != "Usage" && (!null("ConsumedQuantity") || !null("ConsumedUnit")))
      bad("ConsumedQuantity must be null on a " + category + " row");
    if (null("PricingQuantity") != null("PricingUnit")) bad("PricingUnit null exactly when PricingQuantity is");
    if (null("ResourceId") && !null("ResourceName")) bad("ResourceName without ResourceId");
    if (null("RegionId") != null("RegionName")) bad("RegionName null exactly when RegionId is");

    // Costs: unit price × quantity, exactly; unrelated charges (credits) cost what they bill.
    if (!correction) {
      if (!null("ListUnitPrice") && Micro(r.at("ListUnitPrice")) * Micro(r.at("PricingQuantity")) != Pico(r.at("ListCost")))
        bad("ListCost " + r.at("ListCost") + " != ListUnitPrice " + r.at("ListUnitPrice") + " × PricingQuantity " +
            r.at("PricingQuantity"));
      if (!null("ContractedUnitPrice") &&
          Micro(r.at("ContractedUnitPrice")) * Micro(r.at("PricingQuantity")) != Pico(r.at("ContractedCost")))
        bad("ContractedCost " + r.at("ContractedCost") + " != ContractedUnitPrice × PricingQuantity");
    }
    if (category == "Credit" && (r.at("ListCost") != r.at("BilledCost") || r.at("EffectiveCost") != r.at("BilledCost")))
      bad("a Credit's ListCost and EffectiveCost are its BilledCost");
    if (category == "Credit" && Pico(r.at("BilledCost")) > 0) bad("a Credit is negative");

    // Periods: start before end; a charge that is not a correction lies within the billing period.
    const auto cs = Seconds(r.at("ChargePeriodStart")), ce = Seconds(r.at("ChargePeriodEnd"));
    const auto bs = Seconds(r.at("BillingPeriodStart")), be = Seconds(r.at("BillingPeriodEnd"));
    if (cs >= ce) bad("ChargePeriodStart not before ChargePeriodEnd");
    if (bs >= be) bad("BillingPeriodStart not before BillingPeriodEnd");
    if (!correction && (cs < bs || ce > be)) bad("a charge outside its billing period");
    if (category == "Usage" && (cs % 3600 != 0 || ce - cs != 3600) && ce - cs < 28 * 86400)
      bad("a usage row not one UTC hour");
    } catch (const std::exception& e) {
      bad(e.what());
    }
  }
  return v;
}

}  // namespace spillway::test
