#include "core/clock.hpp"

#include <cctype>
#include <cstdio>

namespace spillway {

TimeMs SystemClock::Now() const {
  return std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
}

const Clock& SystemClockInstance() {
  static const SystemClock clock;
  return clock;
}

TimeMs NowMs() { return SystemClockInstance().Now(); }

std::string FormatTime(TimeMs t) {
  using namespace std::chrono;
  const auto days = floor<std::chrono::days>(t);
  const year_month_day ymd{days};
  const hh_mm_ss hms{t - days};
  const int year = int(ymd.year());
  if (year < 0 || year > 9999) {  // never from this system's clock; kept exact all the same
    char buf[48];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", year, unsigned(ymd.month()),
                  unsigned(ymd.day()), int(hms.hours().count()), int(hms.minutes().count()),
                  int(hms.seconds().count()), int(hms.subseconds().count()));
    return buf;
  }
  // Written digit by digit: every timestamp of every response comes through here, and snprintf
  // showed in the read path's profile.
  std::string out = "0000-00-00T00:00:00.000Z";
  const auto put = [&out](size_t at, int value, int width) {
    for (int k = width - 1; k >= 0; --k, value /= 10) out[at + size_t(k)] = char('0' + value % 10);
  };
  put(0, year, 4);
  put(5, int(unsigned(ymd.month())), 2);
  put(8, int(unsigned(ymd.day())), 2);
  put(11, int(hms.hours().count()), 2);
  put(14, int(hms.minutes().count()), 2);
  put(17, int(hms.seconds().count()), 2);
  put(20, int(hms.subseconds().count()), 3);
  return out;
}

namespace {
// Reads exactly `n` digits at text[*i]; false when they are not there.
bool Digits(std::string_view text, size_t* i, size_t n, int* out) {
  if (*i + n > text.size()) return false;
  int v = 0;
  for (size_t k = 0; k < n; ++k) {
    const char c = text[*i + k];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *i += n;
  *out = v;
  return true;
}
bool Lit(std::string_view text, size_t* i, char c) {
  if (*i >= text.size() || text[*i] != c) return false;
  ++*i;
  return true;
}
}  // namespace

std::optional<TimeMs> ParseTime(std::string_view text) {
  size_t i = 0;
  int y, mo, d, h, mi, s;
  if (!Digits(text, &i, 4, &y) || !Lit(text, &i, '-') || !Digits(text, &i, 2, &mo) || !Lit(text, &i, '-') ||
      !Digits(text, &i, 2, &d) || !(Lit(text, &i, 'T') || Lit(text, &i, 't')) || !Digits(text, &i, 2, &h) ||
      !Lit(text, &i, ':') || !Digits(text, &i, 2, &mi) || !Lit(text, &i, ':') || !Digits(text, &i, 2, &s))
    return std::nullopt;
  int ms = 0;
  if (i < text.size() && text[i] == '.') {
    ++i;
    size_t digits = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      if (digits < 3) ms = ms * 10 + (text[i] - '0');
      ++digits, ++i;
    }
    if (digits == 0 || digits > 9) return std::nullopt;
    for (size_t k = digits; k < 3; ++k) ms *= 10;
  }
  const std::string_view rest = text.substr(i);
  if (rest != "Z" && rest != "z" && rest != "+00:00") return std::nullopt;
  using namespace std::chrono;
  const year_month_day ymd{year(y), month(static_cast<unsigned>(mo)), day(static_cast<unsigned>(d))};
  if (!ymd.ok() || h > 23 || mi > 59 || s > 59) return std::nullopt;
  return TimeMs(sys_days(ymd)) + hours(h) + minutes(mi) + seconds(s) + milliseconds(ms);
}

std::string Month::Label() const {
  using namespace std::chrono;
  const year_month_day ymd{floor<days>(begin)};
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04d-%02u", int(ymd.year()), unsigned(ymd.month()));
  return buf;
}

Month MonthOf(TimeMs t) {
  using namespace std::chrono;
  const year_month_day ymd{floor<days>(t)};
  const year_month first = ymd.year() / ymd.month();
  const year_month next = first + months(1);
  return {TimeMs(sys_days(first / 1)), TimeMs(sys_days(next / 1))};
}

std::optional<Month> ParseMonth(std::string_view label) {
  size_t i = 0;
  int y, mo;
  if (!Digits(label, &i, 4, &y) || !Lit(label, &i, '-') || !Digits(label, &i, 2, &mo) || i != label.size() ||
      mo < 1 || mo > 12)
    return std::nullopt;
  using namespace std::chrono;
  return MonthOf(TimeMs(sys_days(year(y) / month(static_cast<unsigned>(mo)) / 1)));
}

}  // namespace spillway
