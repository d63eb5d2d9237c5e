#pragma once
#include <boost/json/object.hpp>
#include <string>
#include <string_view>

namespace spillway::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError };

// Logs go to stderr as one JSON object per line: {"ts":…,"level":…,"msg":…, fields…}.
void Init(const std::string& level);
bool Enabled(Level level);
void Write(Level level, std::string_view msg, const boost::json::object& fields = {});

inline void Info(std::string_view msg, const boost::json::object& f = {}) { Write(Level::kInfo, msg, f); }
inline void Warn(std::string_view msg, const boost::json::object& f = {}) { Write(Level::kWarn, msg, f); }
inline void Error(std::string_view msg, const boost::json::object& f = {}) { Write(Level::kError, msg, f); }
inline void Debug(std::string_view msg, const boost::json::object& f = {}) { Write(Level::kDebug, msg, f); }

}  // namespace spillway::log
