#pragma once
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

// Serialises like boost::json::serialize, except that a double is written in plain decimal
// notation ("spare_fraction": 0.62, as PROTOCOL.md shows; 1.0 for a whole number) rather than as
// 6.2E-1; NaN and infinities, which JSON cannot carry, are written as null; and a string that is
// not valid UTF-8 has its bad bytes replaced by U+FFFD, so the output is always valid JSON.
std::string ToJson(const boost::json::value& v);
// The same value with object members sorted by key and no white space: two requests that differ
// only in member order or spacing have the same canonical form (and so the same idempotency hash).
std::string CanonicalJson(const boost::json::value& v);

// Parses a request body; throws MalformedJson when it is not JSON or an object names a key twice
// (RFC 8259 leaves duplicates undefined; we refuse them rather than guess which one was meant).
boost::json::value ParseJsonBody(std::string_view text);

// Field readers for request bodies; each throws InvalidInput naming the field.
const boost::json::object& RequireObject(const boost::json::value& v);
// A string of 1..max_len bytes, valid UTF-8, without control characters.
std::optional<std::string> OptString(const boost::json::object& o, std::string_view key, size_t max_len);
std::string ReqString(const boost::json::object& o, std::string_view key, size_t max_len);
// A name: as OptString, and it must hold at least one visible (non-space) character.
std::optional<std::string> OptName(const boost::json::object& o, std::string_view key, size_t max_len);
std::string ReqName(const boost::json::object& o, std::string_view key, size_t max_len);
std::optional<std::int64_t> OptInt(const boost::json::object& o, std::string_view key, std::int64_t min,
                                   std::int64_t max);
// Rejects members not in `allowed`, so a typo is an error rather than silently ignored.
void OnlyKeys(const boost::json::object& o, std::initializer_list<std::string_view> allowed);
// InvalidInput naming the first member that is null: for bodies where no field means "none".
void NoNulls(const boost::json::object& o);

}  // namespace spillway
