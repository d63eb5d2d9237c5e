#pragma once
// The FOCUS 1.2 rules a cost export is held to (docs/focus.md), checked from its CSV text alone,
// independently of the code that wrote it: the column names, each value's type and allowed values,
// where nulls are allowed, ListUnitPrice × PricingQuantity = ListCost (and the contracted pair)
// exactly, well-formed periods; and what each InvoiceId's rows add up to.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace spillway::test {

// RFC 4180 CSV: rows of fields (quotes undone).
std::vector<std::vector<std::string>> ParseCsv(const std::string& text);

struct FocusRows {
  std::vector<std::string> header;
  std::vector<std::map<std::string, std::string>> rows;  // column -> value ("" is null)
};
FocusRows ParseFocus(const std::string& csv);

// Every rule a row or the header breaks, one line each ("row 3: ListCost 5.1 != ListUnitPrice × ...").
std::vector<std::string> FocusViolations(const FocusRows& focus);

// Σ BilledCost per InvoiceId, in cents.
std::map<std::string, std::int64_t> BilledCentsByInvoice(const FocusRows& focus);

// "12.34" / "-0.05" -> cents (two decimals at most).
std::int64_t CentsOf(const std::string& decimal);

}  // namespace spillway::test
