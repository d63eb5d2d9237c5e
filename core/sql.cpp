#include "core/sql.hpp"

namespace spillway {

std::vector<int> ParseIntArray(const std::string& s) {
  std::vector<int> out;
  int cur = 0;
  bool in = false;
  for (char c : s) {
    if (c >= '0' && c <= '9') {
      cur = cur * 10 + (c - '0');
      in = true;
    } else if (in) {
      out.push_back(cur);
      cur = 0;
      in = false;
    }
  }
  if (in) out.push_back(cur);
  return out;
}

std::string IntArrayLiteral(const std::vector<int>& v) {
  std::string s = "{";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "}";
}

std::string TextArrayLiteral(const std::vector<std::string>& v) {
  std::string s = "{";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += '"';
    for (char c : v[i]) {
      if (c == '"' || c == '\\') s += '\\';
      s += c;
    }
    s += '"';
  }
  return s + "}";
}

std::string Int64ArrayLiteral(const std::vector<std::int64_t>& v) {
  std::string s = "{";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "}";
}

}  // namespace spillway
