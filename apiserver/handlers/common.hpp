#pragma once
// Small pieces every handler shares: optional values to JSON and list pages.
#include <boost/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/json.hpp"
#include "core/money.hpp"

namespace spillway::handlers {

inline boost::json::value JsonTime(const std::optional<TimeMs>& t) {
  if (!t) return nullptr;
  return boost::json::value(FormatTime(*t));
}
inline boost::json::value JsonText(const std::optional<std::string>& s) {
  if (!s) return nullptr;
  return boost::json::value(*s);
}
inline boost::json::value JsonMicros(const std::optional<std::int64_t>& micros) {
  if (!micros) return nullptr;
  return boost::json::value(FormatMicros(*micros));
}

// {"data": [...], "next_cursor": …} from items fetched with limit + 1; the cursor is cursor_of the
// page's last item, or null when this is the last page.
template <class T, class ToJson, class CursorOf>
boost::json::object Page(const std::vector<T>& items, int limit, ToJson&& to_json, CursorOf&& cursor_of) {
  boost::json::array data;
  for (size_t i = 0; i < items.size() && i < static_cast<size_t>(limit); ++i) data.push_back(to_json(items[i]));
  boost::json::value next = nullptr;
  if (items.size() > static_cast<size_t>(limit)) next = boost::json::value(cursor_of(items[limit - 1]));
  return {{"data", std::move(data)}, {"next_cursor", std::move(next)}};
}
template <class T, class ToJson>
boost::json::object Page(const std::vector<T>& items, int limit, ToJson&& to_json) {
  return Page(items, limit, to_json, [](const T& item) { return item.id; });
}

}  // namespace spillway::handlers
