#pragma once
// How the `spillway` CLI prints what the API answered: a table for people (the default on a
// terminal), JSON for programs (the default when piped: the API's own body), or CSV.
#include <boost/json/fwd.hpp>

#include <ostream>
#include <string>
#include <vector>

namespace spillway::cli {

enum class Format { kTable, kJson, kCsv };
// "table" | "json" | "csv"; throws UsageError otherwise.
Format ParseFormat(const std::string& s);

struct Column {
  std::string header;  // "STATE"
  std::string path;    // a field, or a dotted path into nested objects ("regions.0.region")
};

// One value as text: strings as they are, numbers and booleans as JSON writes them, null as "".
std::string Cell(const boost::json::value& row, const std::string& path);

// Rows (objects) as a table with these columns, or CSV (RFC 4180, a header row first). JSON is the
// caller's: it prints the body as the API sent it.
void PrintRows(std::ostream& out, const boost::json::array& rows, const std::vector<Column>& columns, Format format);
// One object as FIELD VALUE lines (table) or a header row and one row (CSV), its scalar fields in
// the API's order; nested values are written as JSON.
void PrintObject(std::ostream& out, const boost::json::object& object, Format format);

}  // namespace spillway::cli
