// Billing's money: exact rated amounts rounded half-even to cents once, decimal strings both ways,
// and no floating point in billing's sources.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "billing/exact_amount.hpp"
#include "core/money.hpp"

using namespace spillway;
using namespace spillway::billing;

TEST(ExactAmount, RoundsHalfEvenOnceFromTheExactValue) {
  auto cents_of_micros = [](std::int64_t micros) {
    ExactAmount a(1);
    a.Add(micros, 1);
    return a.Cents();
  };
  EXPECT_EQ(cents_of_micros(5'000), 0);    // 0.005 -> 0.00 (to even)
  EXPECT_EQ(cents_of_micros(15'000), 2);   // 0.015 -> 0.02
  EXPECT_EQ(cents_of_micros(25'000), 2);   // 0.025 -> 0.02
  EXPECT_EQ(cents_of_micros(25'001), 3);
  EXPECT_EQ(cents_of_micros(-15'000), -2);
  EXPECT_EQ(cents_of_micros(-25'000), -2);
  // A millisecond at $2.49 an hour is 0.6916… micro-dollars: truncated per sample it would be
  // nothing; kept exact, an hour of them is the whole $2.49.
  ExactAmount hour = ExactAmount::GpuTime();
  for (int i = 0; i < 3'600'000; i += 1000) hour.Add(1000, 2'490'000);
  EXPECT_EQ(hour.Cents(), 249);
  ExactAmount one = ExactAmount::GpuTime();
  one.Add(1, 2'490'000);
  EXPECT_EQ(one.Cents(), 0);
  EXPECT_EQ(one.Micros(), 1);  // 0.69 µ$ rounds to 1
  // 1,000 ms at $0.018 an hour is $0.000005: under half a cent, however many such lines are not summed.
  ExactAmount tiny = ExactAmount::GpuTime();
  tiny.Add(1000, 18'000);
  EXPECT_EQ(tiny.Cents(), 0);
  // Storage over a 30-day month: 100 GB for the whole month at $0.10 per GB-month is $10.00.
  ExactAmount gb = ExactAmount::Storage(30);
  gb.Add(100LL * 30 * kMsPerDay, 100'000);
  EXPECT_EQ(gb.Cents(), 1000);
  ExactAmount mismatched = ExactAmount::Storage(31);
  EXPECT_THROW(mismatched += gb, std::logic_error);
}

TEST(ExactAmount, SumsAreExactInAnyOrderAndRoundToTheNearestCentProperty) {
  std::mt19937_64 rng(2026);
  for (int round = 0; round < 2000; ++round) {
    std::vector<std::pair<std::int64_t, std::int64_t>> terms;
    for (int k = 0, n = 1 + static_cast<int>(rng() % 50); k < n; ++k)
      terms.emplace_back(static_cast<std::int64_t>(rng() % 30'000) + 1, static_cast<std::int64_t>(rng() % 10'000'000) + 1);
    ExactAmount forward = ExactAmount::GpuTime(), backward = ExactAmount::GpuTime(), halves = ExactAmount::GpuTime();
    for (const auto& [q, p] : terms) forward.Add(q, p);
    for (auto it = terms.rbegin(); it != terms.rend(); ++it) backward.Add(it->first, it->second);
    ExactAmount first = ExactAmount::GpuTime(), second = ExactAmount::GpuTime();
    for (std::size_t k = 0; k < terms.size(); ++k) (k % 2 ? first : second).Add(terms[k].first, terms[k].second);
    halves += first;
    halves += second;
    ASSERT_EQ(forward, backward);
    ASSERT_EQ(forward, halves);
    // The rounded value is the nearest cent, ties to even.
    const Int128 unit = static_cast<Int128>(forward.denominator()) * kMicrosPerCent;
    const Int128 diff = forward.numerator() - static_cast<Int128>(forward.Cents()) * unit;
    ASSERT_LE(2 * (diff < 0 ? -diff : diff), unit);
    if (2 * diff == unit || 2 * diff == -unit) {
      ASSERT_EQ(forward.Cents() % 2, 0);
    }
  }
}

TEST(ExactAmount, TheLargestTenantMonthCannotOverflowAndBeyond128BitsIsAnError) {
  ExactAmount month = ExactAmount::GpuTime();
  const std::int64_t gpu_ms = kMaxTenantGpus * 31 * kMsPerDay;
  month.Add(gpu_ms, kMaxPriceMicros);
  // 1,000,000 GPUs × 744 hours × $100,000: $74,400,000,000,000.00.
  EXPECT_EQ(month.Cents(), 7'440'000'000'000'000'000LL / 1000);
  EXPECT_EQ(FormatAmount(month.Cents()), "74400000000000.00");
  ExactAmount huge(1);
  for (int i = 0; i < 2; ++i) huge.Add(INT64_MAX, INT64_MAX);  // each just under 2^126: a third overflows
  EXPECT_THROW(huge.Add(INT64_MAX, INT64_MAX), std::overflow_error);
  EXPECT_THROW(huge.Cents(), std::overflow_error);  // exact, but not a number of cents int64 holds
}

TEST(ExactAmount, DecimalStringsRoundTripAndBadOnesAreRefusedProperty) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 100'000; ++i) {
    const std::int64_t cents = static_cast<std::int64_t>(rng() % 10'000'000'000'000LL);
    ASSERT_EQ(ParseAmount(FormatAmount(cents)), cents) << FormatAmount(cents);
    const std::int64_t micros = static_cast<std::int64_t>(rng() % 1'000'000'000'000'000LL);
    ASSERT_EQ(ParseMicros(FormatMicros(micros)), micros) << FormatMicros(micros);
  }
  EXPECT_EQ(ParseAmount("12.3"), 1230);
  EXPECT_EQ(ParseAmount("12"), 1200);
  EXPECT_EQ(ParseAmount("0.05"), 5);
  for (const char* bad : {"", "-1", "+1", "1e3", "1E3", "NaN", "inf", "1.234", ".5", "1.", " 1", "1 ", "1,00", "0x10",
                          "1234567890123456789012345678901234567890", "12345678901234.00"})
    EXPECT_FALSE(ParseAmount(bad)) << bad;
  EXPECT_EQ(FormatAmount(-5), "-0.05");
  EXPECT_EQ(FormatAmount(0), "0.00");
}

TEST(ExactAmount, NoFloatingPointInBillingsSources) {
  // A word `double` or `float` anywhere in billing/ (comments aside) would let money or a price
  // pass through binary floating point.
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(SPILLWAY_SOURCE_DIR "/billing")) {
    const auto ext = entry.path().extension();
    if (ext != ".cpp" && ext != ".hpp") continue;
    std::ifstream in(entry.path());
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      const auto comment = line.find("//");
      const std::string code = line.substr(0, comment);
      for (const char* word : {"double", "float", "strtod", "stod", "atof"}) {
        for (auto at = code.find(word); at != std::string::npos; at = code.find(word, at + 1)) {
          const bool left = at == 0 || !(std::isalnum(static_cast<unsigned char>(code[at - 1])) || code[at - 1] == '_');
          const auto end = at + std::string(word).size();
          const bool right = end >= code.size() || !(std::isalnum(static_cast<unsigned char>(code[end])) || code[end] == '_');
          if (left && right) found.push_back(entry.path().filename().string() + ":" + std::to_string(n) + ": " + line);
        }
      }
    }
  }
  EXPECT_TRUE(found.empty()) << [&] {
    std::ostringstream o;
    for (const auto& f : found) o << f << "\n";
    return o.str();
  }();
}
