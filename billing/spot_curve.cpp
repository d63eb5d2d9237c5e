#include "billing/spot_curve.hpp"

#include <algorithm>
#include <charconv>

namespace spillway {
namespace {
bool ParsePercent(std::string_view s, std::int64_t* out) {
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v < 0 || v > 100) return false;
  *out = v * 10'000;  // percent -> ppm
  return true;
}
}  // namespace

std::optional<SpotCurve> SpotCurve::Parse(std::string_view text, std::string* error) {
  SpotCurve c;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = text.substr(start, comma - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    const auto colon = item.find(':');
    Point p{};
    if (colon == std::string_view::npos || !ParsePercent(item.substr(0, colon), &p.spare_ppm) ||
        !ParsePercent(item.substr(colon + 1), &p.discount_ppm)) {
      if (error) *error = "each point is spare%:discount% with whole percentages 0-100, got \"" + std::string(item) + "\"";
      return std::nullopt;
    }
    if (!c.points_.empty() && p.spare_ppm <= c.points_.back().spare_ppm) {
      if (error) *error = "spare percentages must rise strictly";
      return std::nullopt;
    }
    c.points_.push_back(p);
    start = comma + 1;
  }
  if (c.points_.size() < 2 || c.points_.front().spare_ppm != 0 || c.points_.back().spare_ppm != kPpm) {
    if (error) *error = "the curve needs points at 0% and 100% spare";
    return std::nullopt;
  }
  return c;
}

std::int64_t SpotCurve::DiscountPpm(std::int64_t spare_ppm) const {
  spare_ppm = std::clamp<std::int64_t>(spare_ppm, 0, kPpm);
  for (size_t i = 1; i < points_.size(); ++i) {
    const Point& a = points_[i - 1];
    const Point& b = points_[i];
    if (spare_ppm <= b.spare_ppm) {
      // a.d + (b.d - a.d) * (x - a.x) / (b.x - a.x), floored: at most 1e12, no overflow.
      const std::int64_t num = (b.discount_ppm - a.discount_ppm) * (spare_ppm - a.spare_ppm);
      const std::int64_t den = b.spare_ppm - a.spare_ppm;
      std::int64_t q = num / den;
      if ((num % den != 0) && (num < 0)) --q;
      return a.discount_ppm + q;
    }
  }
  return points_.back().discount_ppm;
}

std::int64_t SpotTarget(std::int64_t on_demand_micros, std::int64_t spare_ppm, const SpotCurve& curve) {
  const std::int64_t keep_ppm = kPpm - curve.DiscountPpm(spare_ppm);
  // on_demand ≤ ~1e12 micro-dollars per GPU-hour keeps this product inside 64 bits.
  return (on_demand_micros * keep_ppm + kPpm / 2) / kPpm;
}

std::int64_t SpotFloor(std::int64_t on_demand_micros, const SpotPolicy& policy) {
  return std::min(policy.floor_micros, on_demand_micros);
}

std::int64_t NextSpotPrice(std::optional<std::int64_t> previous_micros, std::int64_t target_micros,
                           std::int64_t on_demand_micros, const SpotPolicy& policy) {
  std::int64_t next = target_micros;
  if (previous_micros) {
    const std::int64_t diff = target_micros - *previous_micros;
    const std::int64_t scaled = diff * policy.smoothing_percent;
    const std::int64_t step = scaled >= 0 ? (scaled + 50) / 100 : -((-scaled + 50) / 100);  // half away from zero
    next = *previous_micros + step;
  }
  return std::clamp(next, SpotFloor(on_demand_micros, policy), on_demand_micros);
}

std::int64_t SpareFractionPpm(std::int64_t spare_gpus, std::int64_t total_gpus) {
  if (total_gpus <= 0) return 0;
  return std::clamp<std::int64_t>(spare_gpus * kPpm / total_gpus, 0, kPpm);
}

}  // namespace spillway
