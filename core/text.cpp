#include "core/text.hpp"

#include <cstdint>

namespace spillway {
namespace {

// Length of the well-formed UTF-8 sequence at s[i] and its code point; 0 when malformed.
size_t Sequence(std::string_view s, size_t i, std::uint32_t* cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t n;
  std::uint32_t v, min;
  if (c >= 0xC2 && c <= 0xDF) n = 2, v = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, v = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, v = c & 0x07, min = 0x10000;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(k) & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

bool IsSpace(std::uint32_t cp) {
  return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200B) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000 || cp == 0xFEFF;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  std::uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    const size_t n = Sequence(s, i, &cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool IsCleanText(std::string_view s) {
  std::uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    const size_t n = Sequence(s, i, &cp);
    if (n == 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return false;
    i += n;
  }
  return true;
}

bool IsOneLineText(std::string_view s) {
  std::uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    const size_t n = Sequence(s, i, &cp);
    if (n == 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029) return false;
    i += n;
  }
  return true;
}

bool HasVisibleCharacter(std::string_view s) {
  std::uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    const size_t n = Sequence(s, i, &cp);
    if (n == 0) return false;
    if (!IsSpace(cp)) return true;
    i += n;
  }
  return false;
}

std::string ScrubUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    const size_t n = Sequence(s, i, &cp);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string CsvField(std::string_view v, bool chosen_text) {
  std::string out;
  AppendCsvField(out, v, chosen_text);
  return out;
}

void AppendCsvField(std::string& out, std::string_view v, bool chosen_text) {
  const bool guard =
      chosen_text && !v.empty() && (v[0] == '=' || v[0] == '+' || v[0] == '-' || v[0] == '@' || v[0] == '\t' || v[0] == '\r');
  bool plain = true;  // (a loop: string_view::find_first_of calls memchr per character)
  for (const char c : v)
    if (c == ',' || c == '"' || c == '\r' || c == '\n') {
      plain = false;
      break;
    }
  if (plain) {
    if (guard) out += '\'';
    out.append(v);
    return;
  }
  out += '"';
  if (guard) out += '\'';
  for (char c : v) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
}

}  // namespace spillway
