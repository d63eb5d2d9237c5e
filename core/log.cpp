#include "core/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <boost/json/serialize.hpp>

#include "core/json.hpp"

namespace spillway::log {
namespace {

std::shared_ptr<spdlog::logger>& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_logger_mt("spillway");
    // The level and time come from spdlog; the rest of the object is ours, already JSON.
    l->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l",%v})", spdlog::pattern_time_type::utc);
    l->flush_on(spdlog::level::trace);
    return l;
  }();
  return logger;
}

spdlog::level::level_enum ToSpd(Level l) {
  switch (l) {
    case Level::kTrace: return spdlog::level::trace;
    case Level::kDebug: return spdlog::level::debug;
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarn: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

void Init(const std::string& level) {
  Logger()->set_level(spdlog::level::from_str(level == "warn" ? "warning" : level));
}

bool Enabled(Level level) { return Logger()->should_log(ToSpd(level)); }

void Write(Level level, std::string_view msg, const boost::json::object& fields) {
  if (!Enabled(level)) return;
  // ToJson, not boost::json::serialize: a field quoting the client's bytes (a path, a header) may
  // not be valid UTF-8, and the log stays one valid JSON object per line whatever it quotes.
  std::string line = "\"msg\":" + ToJson(boost::json::string_view(msg.data(), msg.size()));
  for (const auto& [k, v] : fields) {
    line += ',';
    line += ToJson(boost::json::string_view(k));
    line += ':';
    line += ToJson(v);
  }
  Logger()->log(ToSpd(level), "{}", line);
}

}  // namespace spillway::log
