#include "core/json.hpp"

#include <deque>
#include <unordered_set>

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>

#include <set>
#include <vector>
#include <boost/json/parse.hpp>

#include "core/errors.hpp"
#include "core/text.hpp"

namespace spillway {
namespace {
InvalidInput Invalid(std::string_view key, const std::string& why) {
  return InvalidInput(std::string(key) + ": " + why);
}

// Called on text boost::json has already accepted, so only structure needs following. Keys are
// compared as written unless they hold an escape (then decoded); each object's keys are kept in a
// small list (a hash set past 32 of them, so a huge object cannot make this quadratic), and the
// frames are reused, so a batch of thousands of small objects costs no allocation per object.
bool HasDuplicateKeys(std::string_view text) {
  struct Frame {
    bool object = false;
    bool expect_key = false;
    std::vector<std::string_view> keys;
    std::unordered_set<std::string_view> many;
    std::deque<std::string> decoded;  // keys that held escapes (stable addresses)
    void Reset(bool is_object) {
      object = is_object;
      expect_key = is_object;
      keys.clear();
      many.clear();
      decoded.clear();
    }
    bool Insert(std::string_view key) {
      if (!many.empty()) return many.insert(key).second;
      for (auto k : keys)
        if (k == key) return false;
      keys.push_back(key);
      if (keys.size() > 32) many.insert(keys.begin(), keys.end());
      return true;
    }
  };
  std::vector<Frame> stack;
  size_t depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') {
      size_t j = i + 1;
      bool escaped = false;
      while (j < text.size() && text[j] != '"') {
        if (text[j] == '\\') {
          escaped = true;
          j += 2;
        } else {
          ++j;
        }
      }
      if (depth > 0 && stack[depth - 1].object && stack[depth - 1].expect_key) {
        Frame& f = stack[depth - 1];
        std::string_view key = text.substr(i + 1, j - i - 1);
        if (escaped) {
          f.decoded.push_back(std::string(boost::json::parse(text.substr(i, j - i + 1)).as_string()));
          key = f.decoded.back();
        }
        if (!f.Insert(key)) return true;
        f.expect_key = false;
      }
      i = j;
    } else if (c == '{' || c == '[') {
      if (depth == stack.size()) stack.emplace_back();
      stack[depth++].Reset(c == '{');
    } else if (c == '}' || c == ']') {
      if (depth > 0) --depth;
    } else if (c == ',' && depth > 0 && stack[depth - 1].object) {
      stack[depth - 1].expect_key = true;
    }
  }
  return false;
}
}  // namespace

boost::json::value ParseJsonBody(std::string_view text) {
  boost::system::error_code ec;
  auto v = boost::json::parse(boost::json::string_view(text.data(), text.size()), ec);
  if (ec) throw MalformedJson("the body is not valid JSON: " + ec.message());
  if (HasDuplicateKeys(text)) throw MalformedJson("the body is not valid JSON: an object has the same key twice");
  return v;
}

const boost::json::object& RequireObject(const boost::json::value& v) {
  if (!v.is_object()) throw InvalidInput("body: must be a JSON object");
  return v.get_object();
}

std::optional<std::string> OptString(const boost::json::object& o, std::string_view key, size_t max_len) {
  const auto* v = o.if_contains(key);
  if (!v || v->is_null()) return std::nullopt;
  if (!v->is_string()) throw Invalid(key, "must be a string");
  std::string s(v->get_string());
  if (s.empty()) throw Invalid(key, "must not be empty");
  if (s.size() > max_len) throw Invalid(key, "must be at most " + std::to_string(max_len) + " characters");
  if (!IsCleanText(s)) throw Invalid(key, "must not contain control characters");
  return s;
}

std::string ReqString(const boost::json::object& o, std::string_view key, size_t max_len) {
  auto s = OptString(o, key, max_len);
  if (!s) throw Invalid(key, "is required");
  return *s;
}

std::optional<std::string> OptName(const boost::json::object& o, std::string_view key, size_t max_len) {
  auto s = OptString(o, key, max_len);
  if (s && !HasVisibleCharacter(*s)) throw Invalid(key, "must contain a visible character, not only spaces");
  return s;
}

std::string ReqName(const boost::json::object& o, std::string_view key, size_t max_len) {
  auto s = OptName(o, key, max_len);
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

void NoNulls(const boost::json::object& o) {
  for (const auto& kv : o)
    if (kv.value().is_null()) throw Invalid(kv.key(), "must not be null (leave it out for its default)");
}

namespace {
void AppendString(std::string& out, boost::json::string_view s) {
  if (IsValidUtf8(std::string_view(s.data(), s.size()))) {
    out += boost::json::serialize(s);
  } else {
    const std::string clean = ScrubUtf8(std::string_view(s.data(), s.size()));
    out += boost::json::serialize(boost::json::string_view(clean));
  }
}

void AppendJson(std::string& out, const boost::json::value& v) {
  switch (v.kind()) {
    case boost::json::kind::object: {
      out += '{';
      bool first = true;
      for (const auto& kv : v.get_object()) {
        if (!first) out += ',';
        first = false;
        AppendString(out, kv.key());
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
    case boost::json::kind::string:
      AppendString(out, v.get_string());
      break;
    default:
      out += boost::json::serialize(v);
  }
}

void AppendCanonical(std::string& out, const boost::json::value& v) {
  if (v.is_object()) {
    std::vector<const boost::json::key_value_pair*> members;
    for (const auto& kv : v.get_object()) members.push_back(&kv);
    std::sort(members.begin(), members.end(), [](auto* a, auto* b) { return a->key() < b->key(); });
    out += '{';
    for (size_t i = 0; i < members.size(); ++i) {
      if (i) out += ',';
      AppendString(out, members[i]->key());
      out += ':';
      AppendCanonical(out, members[i]->value());
    }
    out += '}';
  } else if (v.is_array()) {
    out += '[';
    bool first = true;
    for (const auto& e : v.get_array()) {
      if (!first) out += ',';
      first = false;
      AppendCanonical(out, e);
    }
    out += ']';
  } else {
    AppendJson(out, v);
  }
}
}  // namespace

std::string CanonicalJson(const boost::json::value& v) {
  std::string out;
  AppendCanonical(out, v);
  return out;
}

std::string ToJson(const boost::json::value& v) {
  std::string out;
  AppendJson(out, v);
  return out;
}

}  // namespace spillway
