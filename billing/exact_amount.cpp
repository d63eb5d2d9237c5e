#include "billing/exact_amount.hpp"

#include <stdexcept>

namespace spillway::billing {

ExactAmount::ExactAmount(std::int64_t denominator) : denominator_(denominator) {
  if (denominator <= 0) throw std::logic_error("an amount's denominator is positive");
}

void ExactAmount::Add(std::int64_t quantity, std::int64_t price_micros) {
  const Int128 product = static_cast<Int128>(quantity) * price_micros;  // |q·p| < 2^126: exact
  if (__builtin_add_overflow(numerator_, product, &numerator_))
    throw std::overflow_error("a rated amount beyond 128 bits");
}

ExactAmount& ExactAmount::operator+=(const ExactAmount& other) {
  if (other.denominator_ != denominator_) throw std::logic_error("amounts over different denominators added");
  if (__builtin_add_overflow(numerator_, other.numerator_, &numerator_))
    throw std::overflow_error("a rated amount beyond 128 bits");
  return *this;
}

Int128 DivideHalfEven(Int128 n, Int128 d) {
  if (d <= 0) throw std::logic_error("division by a non-positive denominator");
  Int128 q = n / d, r = n % d;
  if (r < 0) r += d, --q;  // floor: 0 <= r < d
  const Int128 twice = 2 * r;  // r < d, and d is at most a month's ms × 10,000: no overflow
  if (twice > d || (twice == d && q % 2 != 0)) ++q;
  return q;
}

std::int64_t ExactAmount::Cents() const {
  const Int128 cents = DivideHalfEven(numerator_, static_cast<Int128>(denominator_) * kMicrosPerCent);
  if (cents > INT64_MAX || cents < INT64_MIN) throw std::overflow_error("an amount beyond int64 cents");
  return static_cast<std::int64_t>(cents);
}

std::int64_t ExactAmount::Micros() const {
  const Int128 micros = DivideHalfEven(numerator_, denominator_);
  if (micros > INT64_MAX || micros < INT64_MIN) throw std::overflow_error("an amount beyond int64 micro-dollars");
  return static_cast<std::int64_t>(micros);
}

std::string FormatAmount(std::int64_t cents) {
  const bool negative = cents < 0;
  const std::uint64_t v = negative ? 0 - static_cast<std::uint64_t>(cents) : static_cast<std::uint64_t>(cents);
  std::string out = std::to_string(v / 100);
  const unsigned rest = static_cast<unsigned>(v % 100);
  out += '.';
  out += static_cast<char>('0' + rest / 10);
  out += static_cast<char>('0' + rest % 10);
  return negative ? "-" + out : out;
}

std::optional<std::int64_t> ParseAmount(std::string_view text) {
  std::int64_t whole = 0;
  std::size_t i = 0, digits = 0;
  for (; i < text.size() && text[i] != '.'; ++i, ++digits) {
    if (text[i] < '0' || text[i] > '9' || digits == 13) return std::nullopt;
    whole = whole * 10 + (text[i] - '0');
  }
  if (digits == 0) return std::nullopt;
  std::int64_t cents = 0;
  if (i < text.size()) {
    const std::string_view frac = text.substr(i + 1);
    if (frac.empty() || frac.size() > 2) return std::nullopt;
    for (char c : frac) {
      if (c < '0' || c > '9') return std::nullopt;
      cents = cents * 10 + (c - '0');
    }
    if (frac.size() == 1) cents *= 10;
  }
  return whole * 100 + cents;
}

}  // namespace spillway::billing

namespace spillway::billing {

std::string FormatMicrosWide(Int128 micros) {
  const bool negative = micros < 0;
  unsigned __int128 v = negative ? 0 - static_cast<unsigned __int128>(micros) : static_cast<unsigned __int128>(micros);
  std::string frac(6, '0');
  for (int i = 5; i >= 0; --i, v /= 10) frac[static_cast<std::size_t>(i)] = static_cast<char>('0' + v % 10);
  std::string whole;
  do {
    whole.insert(whole.begin(), static_cast<char>('0' + v % 10));
    v /= 10;
  } while (v > 0);
  return (negative ? "-" : "") + whole + "." + frac;
}

Int128 ParseWide(std::string_view text) {
  const bool negative = !text.empty() && text[0] == '-';
  if (negative) text.remove_prefix(1);
  if (const auto dot = text.find('.'); dot != std::string_view::npos) {
    // round() leaves "123" or "123.0…": anything past the point must be zeros.
    if (text.find_first_not_of('0', dot + 1) != std::string_view::npos)
      throw std::invalid_argument("not an integer: " + std::string(text));
    text = text.substr(0, dot);
  }
  if (text.empty()) throw std::invalid_argument("not an integer");
  constexpr Int128 kMax = static_cast<Int128>((~static_cast<unsigned __int128>(0)) >> 1);
  Int128 v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') throw std::invalid_argument("not an integer: " + std::string(text));
    if (v > (kMax - (c - '0')) / 10) throw std::overflow_error("a sum past 128 bits");
    v = v * 10 + (c - '0');
  }
  return negative ? -v : v;
}

std::int64_t Clamp64(Int128 v) {
  if (v > INT64_MAX) return INT64_MAX;
  if (v < INT64_MIN) return INT64_MIN;
  return static_cast<std::int64_t>(v);
}

}  // namespace spillway::billing
