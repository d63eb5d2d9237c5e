#pragma once
// Time: one Clock that rules read "now" from (the system's, or a fake one that tests move by hand),
// and the UTC helpers every module shares (RFC 3339, calendar months).
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

using TimeMs = std::chrono::sys_time<std::chrono::milliseconds>;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimeMs Now() const = 0;
};
using ClockPtr = std::unique_ptr<Clock>;

class SystemClock final : public Clock {
 public:
  TimeMs Now() const override;
};

// Stands still until told to move: rules and stores under test see exactly the time the test sets.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(TimeMs start) : now_ms_(start.time_since_epoch().count()) {}
  TimeMs Now() const override { return TimeMs(std::chrono::milliseconds(now_ms_.load())); }
  void Set(TimeMs t) { now_ms_ = t.time_since_epoch().count(); }
  void Advance(std::chrono::milliseconds d) { now_ms_ += d.count(); }

 private:
  std::atomic<std::int64_t> now_ms_;
};

// The process-wide system clock, for code that has no clock handed to it (logs, the agent).
const Clock& SystemClockInstance();
TimeMs NowMs();

// RFC 3339 UTC with milliseconds: "2026-11-26T05:34:43.123Z".
std::string FormatTime(TimeMs t);
// Accepts YYYY-MM-DDTHH:MM:SS[.fff]Z (or +00:00): the API speaks UTC only.
std::optional<TimeMs> ParseTime(std::string_view text);

// A calendar month in UTC: [begin, end).
struct Month {
  TimeMs begin, end;
  std::string Label() const;  // "2026-11"
};
Month MonthOf(TimeMs t);
// "2026-11" -> that month; nullopt when malformed.
std::optional<Month> ParseMonth(std::string_view label);

inline std::int64_t EpochMs(TimeMs t) { return t.time_since_epoch().count(); }
inline TimeMs FromEpochMs(std::int64_t ms) { return TimeMs(std::chrono::milliseconds(ms)); }

}  // namespace spillway
