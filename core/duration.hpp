#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

using Millis = std::chrono::milliseconds;

// Parses "500ms", "10s", "2m", "1h" and sums like "1m30s"; nullopt on anything else.
std::optional<Millis> ParseDuration(std::string_view text);
// The shortest exact spelling: 90000ms -> "90s", 120000ms -> "2m".
std::string FormatDuration(Millis d);

}  // namespace spillway
