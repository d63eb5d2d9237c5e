#pragma once
// The spot market's pricing rule (ARCHITECTURE.md, "Billing"): price = on-demand × (1 − discount),
// the discount a piecewise-linear function of the pool's spare fraction, smoothed and clamped.
// All integer arithmetic: fractions in parts per million, prices in micro-dollars.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace spillway {

constexpr std::int64_t kPpm = 1'000'000;

class SpotCurve {
 public:
  struct Point {
    std::int64_t spare_ppm;
    std::int64_t discount_ppm;
  };
  // "spare%:discount%" pairs with spare rising from 0 to 100, e.g. "0:10,20:10,80:70,100:70".
  static std::optional<SpotCurve> Parse(std::string_view text, std::string* error);
  // The discount at `spare_ppm` (0..1e6), interpolated linearly and rounded down.
  std::int64_t DiscountPpm(std::int64_t spare_ppm) const;
  const std::vector<Point>& points() const { return points_; }

 private:
  std::vector<Point> points_;
};

struct SpotPolicy {
  SpotCurve curve;
  std::int64_t smoothing_percent = 100;  // share of the way from the last price to the target per reprice
  std::int64_t floor_micros = 0;
};

// on_demand × (1 − discount(spare)), in micro-dollars, rounded half up.
std::int64_t SpotTarget(std::int64_t on_demand_micros, std::int64_t spare_ppm, const SpotCurve& curve);
// The next published price: the first one is the target itself; later ones move smoothing_percent of
// the way from the last price towards the target. Always within [floor, on_demand].
// The lowest a spot price may go: spot.floor, or the list price when that is lower.
std::int64_t SpotFloor(std::int64_t on_demand_micros, const SpotPolicy& policy);
std::int64_t NextSpotPrice(std::optional<std::int64_t> previous_micros, std::int64_t target_micros,
                           std::int64_t on_demand_micros, const SpotPolicy& policy);
// spare / total in ppm (0 when the pool has no GPUs), clamped to 0..1e6.
std::int64_t SpareFractionPpm(std::int64_t spare_gpus, std::int64_t total_gpus);

}  // namespace spillway
