#pragma once
// Helpers for stores (and only stores): mapping columns to plain types and passing nullable
// parameters. Each store declares its statements as named constants and maps rows by column name.
#include <pqxx/pqxx>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"

// A timestamptz column as epoch milliseconds (NULL stays NULL): SELECT SPW_EPOCH_MS("created_at") AS created_ms.
#define SPW_EPOCH_MS(column) "(extract(epoch FROM " column ") * 1000)::bigint"
// Parameter $n, epoch milliseconds, as a timestamptz: WHERE hour >= " SPW_TS(2) "
#define SPW_TS(n) "to_timestamp($" #n "::bigint / 1000.0)"

namespace spillway {

// An epoch-milliseconds column (see SPW_EPOCH_MS) as a time; nullopt for NULL. Each takes a
// libpqxx field or a core/pg_async PgField (the io threads' non-blocking reads), so one mapping
// function serves both.
template <class Field>
std::optional<TimeMs> TimeFrom(const Field& f) {
  if (f.is_null()) return std::nullopt;
  return TimeMs(std::chrono::milliseconds(f.template as<std::int64_t>()));
}
template <class Field>
std::optional<std::string> TextFrom(const Field& f) {
  if (f.is_null()) return std::nullopt;
  return f.template as<std::string>();
}
template <class Field>
std::optional<std::int64_t> IntFrom(const Field& f) {
  if (f.is_null()) return std::nullopt;
  return f.template as<std::int64_t>();
}

// A nullable text parameter: NULL when empty. The optional must outlive the statement call.
inline const char* Nullable(const std::optional<std::string>& s) { return s ? s->c_str() : nullptr; }
// An optional integer as a nullable parameter's text (keep the result alive across the call).
inline std::optional<std::string> TextOf(const std::optional<std::int64_t>& v) {
  if (!v) return std::nullopt;
  return std::to_string(*v);
}
inline std::optional<std::string> TextOf(const std::optional<TimeMs>& t) {
  if (!t) return std::nullopt;
  return FormatTime(*t);
}

std::vector<int> ParseIntArray(const std::string& pg_array);  // "{0,1}" -> {0, 1}
std::string IntArrayLiteral(const std::vector<int>& v);       // {0, 1} -> "{0,1}"
std::string Int64ArrayLiteral(const std::vector<std::int64_t>& v);
// Any strings as a text[] literal, each element quoted: {"a", "b,\"c"} -> {"a","b,\"c"}.
std::string TextArrayLiteral(const std::vector<std::string>& v);

}  // namespace spillway
