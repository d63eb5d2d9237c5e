#include "core/duration.hpp"

#include <cctype>
#include <cstdint>
#include <limits>

namespace spillway {

std::optional<Millis> ParseDuration(std::string_view text) {
  if (text.empty()) return std::nullopt;
  std::int64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (!std::isdigit(static_cast<unsigned char>(text[i]))) return std::nullopt;
    std::int64_t n = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      if (n > std::numeric_limits<std::int64_t>::max() / 10 - 10) return std::nullopt;
      n = n * 10 + (text[i] - '0');
      ++i;
    }
    std::int64_t unit;
    if (text.substr(i, 2) == "ms") {
      unit = 1, i += 2;
    } else if (i < text.size() && text[i] == 's') {
      unit = 1000, ++i;
    } else if (i < text.size() && text[i] == 'm') {
      unit = 60'000, ++i;
    } else if (i < text.size() && text[i] == 'h') {
      unit = 3'600'000, ++i;
    } else {
      return std::nullopt;
    }
    if (n > (std::numeric_limits<std::int64_t>::max() - total) / unit) return std::nullopt;
    total += n * unit;
  }
  return Millis(total);
}

std::string FormatDuration(Millis d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace spillway
