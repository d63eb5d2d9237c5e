#pragma once
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

using TimeMs = std::chrono::sys_time<std::chrono::milliseconds>;

// RFC 3339 UTC with milliseconds: "2026-11-26T05:34:43.123Z".
std::string FormatTime(TimeMs t);
std::optional<TimeMs> ParseTime(std::string_view text);
TimeMs NowMs();

// Serialises like boost::json::serialize, except that a double is written in plain decimal
// notation ("spare_fraction": 0.62, as PROTOCOL.md shows; 1.0 for a whole number) rather than as
// 6.2E-1; NaN and infinities, which JSON cannot carry, are written as null.
std::string ToJson(const boost::json::value& v);

// Field readers for request bodies; each throws ApiError 422 "validation_failed" naming the field.
const boost::json::object& RequireObject(const boost::json::value& v);
std::optional<std::string> OptString(const boost::json::object& o, std::string_view key, size_t max_len);
std::string ReqString(const boost::json::object& o, std::string_view key, size_t max_len);
std::optional<std::int64_t> OptInt(const boost::json::object& o, std::string_view key, std::int64_t min,
                                   std::int64_t max);
// Rejects members not in `allowed`, so a typo is an error rather than silently ignored.
void OnlyKeys(const boost::json::object& o, std::initializer_list<std::string_view> allowed);

}  // namespace spillway
