#pragma once
// Rated money kept exact (docs/architecture.md, "Billing"): a line's amount is an integer numerator
// over the fixed denominator of what it rates, in micro-dollars, and is rounded half-even to cents
// once, from that exact value. GPU time: Σ gpu_ms × µ$ per GPU-hour, over 3,600,000 (ms in an hour).
// Storage: Σ GB-ms × µ$ per GB-month, over the milliseconds of that month (its own number of days).
// The numerator is 128 bits: one product of two int64 values fits, and a sum that would not is an
// error (std::overflow_error), never a wrapped amount. No floating point anywhere money flows.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace spillway::billing {

using Int128 = __int128;

inline constexpr std::int64_t kMsPerHour = 3'600'000;
inline constexpr std::int64_t kMsPerDay = 86'400'000;
inline constexpr std::int64_t kMicrosPerCent = 10'000;

// The largest tenant-month Spillway is written for (docs/architecture.md, "Billing"): 1,000,000 GPUs
// held for a 31-day month at $100,000 per GPU-hour: 2.7e15 GPU-ms, an exact numerator near 2^88 and
// 7.4e15 cents, well inside 128 and 64 bits.
inline constexpr std::int64_t kMaxTenantGpus = 1'000'000;
inline constexpr std::int64_t kMaxPriceMicros = 100'000LL * 1'000'000;
// The largest amount an API takes for one credit, credit note or monthly limit: $1,000,000,000,000.00
// (1e14 cents, 1e18 µ$: inside 64 bits in µ$ too). Larger is refused (422 naming the field).
inline constexpr std::int64_t kMaxAmountCents = 100'000'000'000'000LL;
// The largest storage price the book takes, per GB-month: $1,000,000.000000.
inline constexpr std::int64_t kMaxStoragePriceMicros = 1'000'000LL * 1'000'000;

class ExactAmount {
 public:
  // An amount of zero over `denominator` (> 0).
  explicit ExactAmount(std::int64_t denominator);
  // A GPU-time amount of zero: its denominator is the milliseconds of an hour.
  static ExactAmount GpuTime() { return ExactAmount(kMsPerHour); }
  // A storage amount of zero for a month of `days` days: its denominator is that month's milliseconds.
  static ExactAmount Storage(int days) { return ExactAmount(days * kMsPerDay); }

  // Adds quantity × price to the numerator (gpu_ms × µ$/GPU-hour, or GB-ms × µ$/GB-month).
  void Add(std::int64_t quantity, std::int64_t price_micros);
  // Adds another amount of the same denominator (std::logic_error otherwise).
  ExactAmount& operator+=(const ExactAmount& other);

  Int128 numerator() const { return numerator_; }
  std::int64_t denominator() const { return denominator_; }
  // The amount in cents, rounded half-even once from the exact value.
  std::int64_t Cents() const;
  // The amount in micro-dollars, rounded half-even (an average price's precision, say).
  std::int64_t Micros() const;
  bool operator==(const ExactAmount& o) const {
    return numerator_ == o.numerator_ && denominator_ == o.denominator_;
  }

 private:
  Int128 numerator_ = 0;
  std::int64_t denominator_;
};

// n / d rounded half-even to an integer (d > 0; n of either sign).
Int128 DivideHalfEven(Int128 n, Int128 d);
// A 128-bit micro-dollar sum written with six decimals, as FormatMicros writes 64 bits.
std::string FormatMicrosWide(Int128 micros);
// A numeric column's text (an integer, as round() leaves it) as 128 bits; std::overflow_error past them.
Int128 ParseWide(std::string_view text);
// A 128-bit value clamped into 64 bits (for gauges and runways, never for money that is billed).
std::int64_t Clamp64(Int128 v);
// Cents written as dollars: 1234 -> "12.34", -5 -> "-0.05".
std::string FormatAmount(std::int64_t cents);
// An amount as an API takes it: "12.34", "12.3", "12" -> cents. nullopt for a sign, more than two
// decimals, an exponent, anything not a plain decimal, or more than 13 digits before the point.
std::optional<std::int64_t> ParseAmount(std::string_view text);

}  // namespace spillway::billing
