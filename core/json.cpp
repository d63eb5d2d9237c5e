#include "core/json.hpp"

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "core/errors.hpp"

namespace spillway {
namespace {
ApiError Invalid(std::string_view key, const std::string& why) {
  return ApiError(422, "validation_failed", std::string(key) + ": " + why);
}
}  // namespace

std::string FormatTime(TimeMs t) {
  using namespace std::chrono;
  const auto days = floor<std::chrono::days>(t);
  const year_month_day ymd{days};
  const hh_mm_ss hms{t - days};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", int(ymd.year()), unsigned(ymd.month()),
                unsigned(ymd.day()), int(hms.hours().count()), int(hms.minutes().count()),
                int(hms.seconds().count()), int(hms.subseconds().count()));
  return buf;
}

std::optional<TimeMs> ParseTime(std::string_view text) {
  // YYYY-MM-DDTHH:MM:SS[.fff]Z (UTC only, as the API speaks).
  int y, mo, d, h, mi, s;
  char tail[32] = {0};
  const std::string str(text);
  if (std::sscanf(str.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%31s", &y, &mo, &d, &h, &mi, &s, tail) < 7) return std::nullopt;
  int ms = 0;
  std::string rest(tail);
  if (!rest.empty() && rest[0] == '.') {
    size_t i = 1, digits = 0;
    while (i < rest.size() && std::isdigit(static_cast<unsigned char>(rest[i]))) {
      if (digits < 3) ms = ms * 10 + (rest[i] - '0');
      ++digits, ++i;
    }
    if (digits == 0) return std::nullopt;
    for (size_t k = digits; k < 3; ++k) ms *= 10;
    rest = rest.substr(i);
  }
  if (rest != "Z" && rest != "z" && rest != "+00:00") return std::nullopt;
  using namespace std::chrono;
  const year_month_day ymd{year(y), month(static_cast<unsigned>(mo)), day(static_cast<unsigned>(d))};
  if (!ymd.ok() || h > 23 || mi > 59 || s > 59) return std::nullopt;
  return TimeMs(sys_days(ymd)) + hours(h) + minutes(mi) + seconds(s) + milliseconds(ms);
}

TimeMs NowMs() { return std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now()); }

const boost::json::object& RequireObject(const boost::json::value& v) {
  if (!v.is_object()) throw ApiError(422, "validation_failed", "the body must be a JSON object");
  return v.get_object();
}

std::optional<std::string> OptString(const boost::json::object& o, std::string_view key, size_t max_len) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_string()) throw Invalid(key, "must be a string");
  std::string s(v->get_string());
  if (s.empty()) throw Invalid(key, "must not be empty");
  if (s.size() > max_len) throw Invalid(key, "must be at most " + std::to_string(max_len) + " characters");
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) throw Invalid(key, "must not contain control characters");
  return s;
}

std::string ReqString(const boost::json::object& o, std::string_view key, size_t max_len) {
  auto s = OptString(o, key, max_len);
  if (!s) throw Invalid(key, "is required");
  return *s;
}

std::optional<std::int64_t> OptInt(const boost::json::object& o, std::string_view key, std::int64_t min,
                                   std::int64_t max) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::nullopt;
  std::int64_t n;
  if (v->is_int64()) n = v->get_int64();
  else if (v->is_uint64() && v->get_uint64() <= static_cast<std::uint64_t>(INT64_MAX)) n = static_cast<std::int64_t>(v->get_uint64());
  else throw Invalid(key, "must be an integer");
  if (n < min || n > max) throw Invalid(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return n;
}

void OnlyKeys(const boost::json::object& o, std::initializer_list<std::string_view> allowed) {
  for (const auto& kv : o) {
    bool ok = false;
    for (auto a : allowed) ok |= (kv.key() == a);
    if (!ok) throw Invalid(kv.key(), "is not a known field");
  }
}

namespace {
void AppendJson(std::string& out, const boost::json::value& v) {
  switch (v.kind()) {
    case boost::json::kind::object: {
      out += '{';
      bool first = true;
      for (const auto& kv : v.get_object()) {
        if (!first) out += ',';
        first = false;
        out += boost::json::serialize(boost::json::string_view(kv.key()));
        out += ':';
        AppendJson(out, kv.value());
      }
      out += '}';
      break;
    }
    case boost::json::kind::array: {
      out += '[';
      bool first = true;
      for (const auto& e : v.get_array()) {
        if (!first) out += ',';
        first = false;
        AppendJson(out, e);
      }
      out += ']';
      break;
    }
    case boost::json::kind::double_: {
      const double d = v.get_double();
      char buf[64];
      const auto r = std::isfinite(d) ? std::to_chars(buf, buf + sizeof buf, d, std::chars_format::fixed)
                                      : std::to_chars_result{buf, std::errc::value_too_large};
      if (r.ec == std::errc()) {
        out.append(buf, r.ptr);
        // Keep a whole number recognisably a fraction: 1.0, not 1 (as Python's json writes it).
        if (std::find(buf, r.ptr, '.') == r.ptr) out += ".0";
      } else if (std::isfinite(d)) {
        out += boost::json::serialize(v);  // too long for plain notation: keep the exponent
      } else {
        out += "null";
      }
      break;
    }
    default:
      out += boost::json::serialize(v);
  }
}
}  // namespace

std::string ToJson(const boost::json::value& v) {
  std::string out;
  AppendJson(out, v);
  return out;
}

}  // namespace spillway
