#pragma once
// Money is exact: integer micro-dollars (1e-6 USD), parsed from and written as decimal strings.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

constexpr std::int64_t kMicrosPerDollar = 1'000'000;

// "2.49", "2.490000", "0.5" -> micro-dollars; nullopt for negatives, more than six decimals,
// exponents or anything that is not a plain decimal.
std::optional<std::int64_t> ParseMicros(std::string_view text);
// A rate with all six decimals: 2490000 -> "2.490000".
std::string FormatMicros(std::int64_t micros);
// An amount rounded half-even to cents: 12345000 -> "12.34", 12355000 -> "12.36".
std::string FormatCents(std::int64_t micros);
// Rounds an exact micro-dollar value half-even to whole cents, still in micro-dollars.
std::int64_t RoundToCents(std::int64_t micros);

}  // namespace spillway
