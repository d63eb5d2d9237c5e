#include "cli/output.hpp"

#include <boost/json.hpp>

#include <algorithm>

#include "cli/profile.hpp"
#include "core/text.hpp"

namespace spillway::cli {

Format ParseFormat(const std::string& s) {
  if (s == "table") return Format::kTable;
  if (s == "json") return Format::kJson;
  if (s == "csv") return Format::kCsv;
  throw UsageError("--output must be table, json or csv (got " + s + ")");
}

namespace {
const boost::json::value* At(const boost::json::value& v, const std::string& path) {
  const boost::json::value* cur = &v;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur->is_object()) {
      const auto* next = cur->as_object().if_contains(part);
      if (!next) return nullptr;
      cur = next;
    } else if (cur->is_array() && !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
      const auto& a = cur->as_array();
      const size_t i = std::stoul(part);
      if (i >= a.size()) return nullptr;
      cur = &a[i];
    } else {
      return nullptr;
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

std::string Text(const boost::json::value& v) {
  if (v.is_string()) return std::string(v.as_string());
  if (v.is_null()) return "";
  return boost::json::serialize(v);
}
}  // namespace

std::string Cell(const boost::json::value& row, const std::string& path) {
  const auto* v = At(row, path);
  return v ? Text(*v) : "";
}

void PrintRows(std::ostream& out, const boost::json::array& rows, const std::vector<Column>& columns, Format format) {
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    std::vector<std::string> line;
    for (const auto& c : columns) line.push_back(Cell(r, c.path));
    cells.push_back(std::move(line));
  }
  if (format == Format::kCsv) {
    for (size_t i = 0; i < columns.size(); ++i) out << (i ? "," : "") << CsvField(columns[i].path);
    out << "\r\n";
    for (const auto& line : cells) {
      for (size_t i = 0; i < line.size(); ++i) out << (i ? "," : "") << CsvField(line[i]);
      out << "\r\n";
    }
    return;
  }
  std::vector<size_t> width;
  for (const auto& c : columns) width.push_back(c.header.size());
  for (const auto& line : cells)
    for (size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
  auto print = [&](const std::vector<std::string>& line) {
    std::string s;
    for (size_t i = 0; i < line.size(); ++i) {
      s += line[i];
      if (i + 1 < line.size()) s += std::string(width[i] - line[i].size() + 2, ' ');
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    out << s << "\n";
  };
  std::vector<std::string> headers;
  for (const auto& c : columns) headers.push_back(c.header);
  print(headers);
  for (const auto& line : cells) print(line);
}

void PrintObject(std::ostream& out, const boost::json::object& object, Format format) {
  if (format == Format::kCsv) {
    bool first = true;
    for (const auto& kv : object) {
      out << (first ? "" : ",") << CsvField(std::string(kv.key()));
      first = false;
    }
    out << "\r\n";
    first = true;
    for (const auto& kv : object) {
      out << (first ? "" : ",") << CsvField(Text(kv.value()));
      first = false;
    }
    out << "\r\n";
    return;
  }
  size_t width = 0;
  for (const auto& kv : object) width = std::max(width, kv.key().size());
  for (const auto& kv : object)
    out << std::string(kv.key()) << std::string(width - kv.key().size() + 2, ' ') << Text(kv.value()) << "\n";
}

}  // namespace spillway::cli
