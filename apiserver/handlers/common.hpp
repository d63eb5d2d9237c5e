#pragma once
// Small pieces every handler shares: nullable columns to JSON and list pages.
#include <boost/json.hpp>
#include <pqxx/pqxx>

#include "core/clock.hpp"
#include "core/json.hpp"

namespace spillway::handlers {

// Reports read several statements; a repeatable-read transaction gives them one snapshot, so a host
// registering meanwhile is in all of them or in none.
using Snapshot = pqxx::transaction<pqxx::isolation_level::repeatable_read, pqxx::readwrite_policy::read_only>;

// A column of epoch milliseconds (or NULL) as an RFC 3339 time (or null).
inline boost::json::value JsonTime(const pqxx::field& f) {
  if (f.is_null()) return nullptr;
  return boost::json::value(FormatTime(TimeMs(std::chrono::milliseconds(f.as<std::int64_t>()))));
}

inline boost::json::value JsonText(const pqxx::field& f) {
  if (f.is_null()) return nullptr;
  return boost::json::value(f.as<std::string>());
}

// {"data": [...], "next_cursor": …} from rows fetched with LIMIT limit + 1; the cursor is the
// first column (the id) of the page's last row, or null when this is the last page.
template <class ToJson>
boost::json::object Page(const pqxx::result& rows, int limit, ToJson&& to_json) {
  boost::json::array data;
  for (size_t i = 0; i < rows.size() && i < static_cast<size_t>(limit); ++i) data.push_back(to_json(rows[i]));
  boost::json::value next = nullptr;
  if (rows.size() > static_cast<size_t>(limit)) next = rows[limit - 1][0].as<std::string>();
  return {{"data", std::move(data)}, {"next_cursor", std::move(next)}};
}

}  // namespace spillway::handlers
