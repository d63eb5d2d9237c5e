#include "core/money.hpp"

#include <cstdio>
#include <limits>

namespace spillway {

std::optional<std::int64_t> ParseMicros(std::string_view text) {
  if (text.empty()) return std::nullopt;
  std::int64_t whole = 0, frac = 0;
  size_t i = 0, digits = 0;
  for (; i < text.size() && text[i] != '.'; ++i) {
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
    if (whole > (std::numeric_limits<std::int64_t>::max() / kMicrosPerDollar - 10) / 10) return std::nullopt;
    whole = whole * 10 + (text[i] - '0');
    ++digits;
  }
  if (digits == 0) return std::nullopt;
  if (i < text.size()) {
    ++i;  // '.'
    size_t frac_digits = 0;
    for (; i < text.size(); ++i, ++frac_digits) {
      if (text[i] < '0' || text[i] > '9' || frac_digits == 6) return std::nullopt;
      frac = frac * 10 + (text[i] - '0');
    }
    if (frac_digits == 0) return std::nullopt;
    for (; frac_digits < 6; ++frac_digits) frac *= 10;
  }
  return whole * kMicrosPerDollar + frac;
}

std::string FormatMicros(std::int64_t micros) {
  const bool neg = micros < 0;
  const std::uint64_t v = neg ? 0 - static_cast<std::uint64_t>(micros) : static_cast<std::uint64_t>(micros);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%llu.%06llu", neg ? "-" : "", static_cast<unsigned long long>(v / 1'000'000),
                static_cast<unsigned long long>(v % 1'000'000));
  return buf;
}

std::int64_t RoundToCents(std::int64_t micros) {
  constexpr std::int64_t kCent = 10'000;
  std::int64_t q = micros / kCent, r = micros % kCent;
  if (r < 0) r += kCent, --q;  // floor division
  if (r > kCent / 2 || (r == kCent / 2 && (q % 2 != 0))) ++q;
  return q * kCent;
}

std::string FormatCents(std::int64_t micros) {
  const std::int64_t cents = RoundToCents(micros) / 10'000;
  const bool neg = cents < 0;
  const std::uint64_t v = neg ? 0 - static_cast<std::uint64_t>(cents) : static_cast<std::uint64_t>(cents);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%llu.%02llu", neg ? "-" : "", static_cast<unsigned long long>(v / 100),
                static_cast<unsigned long long>(v % 100));
  return buf;
}

}  // namespace spillway
