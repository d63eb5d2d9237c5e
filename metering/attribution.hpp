#pragma once
// What a stored sample row means (docs/protocol.md, "What is billed, exactly"): a stretch of one
// GPU's time with one owner, inside one UTC hour. An agent's sample is cut into such pieces at
// ingest: the part of its interval inside its instance's hold of that GPU (gpu_allocation_history)
// is the instance's, the rest is the GPU's time without an owner (fleet utilisation still sees
// it), and a sample that spans the turn of an hour is cut there, so that an hour's rollup holds
// exactly the time inside that hour. The clock-skew tolerance decides what ingest accepts; it
// never widens what is attributed.
#include <cstdint>
#include <optional>
#include <vector>

#include "core/clock.hpp"

namespace spillway::metering {

// One stretch in which an instance held the GPU: [from, to), `to` absent while still held.
struct Hold {
  TimeMs from{};
  std::optional<TimeMs> to;
};

// A stored row: the interval_ms ending at ts, owned by the sample's instance or by nobody.
struct SamplePiece {
  TimeMs ts{};
  std::int64_t interval_ms = 0;
  bool attributed = false;
  std::int64_t energy_mj = 0;  // the sample's energy, shared by time (the pieces add up to it)
};

inline constexpr std::int64_t kHourMs = 3'600'000;

// The hour a piece ending at `ts` lies in: the one holding its last millisecond (a piece ending on
// the hour belongs to the hour before), as the rollups and billing count it.
inline std::int64_t HourOfEnd(TimeMs ts) {
  const std::int64_t last = EpochMs(ts) - 1;
  return (last >= 0 ? last / kHourMs : (last - kHourMs + 1) / kHourMs) * kHourMs;
}

// Cuts the interval [ts - interval_ms, ts) at the turns of UTC hours and, when `holds` are given
// (the sample names an instance), at the edges of those holds. A hold still open is taken to end
// at `known_until` (the database's now: time the control plane has not lived through yet is not
// known to be held). Pieces come in time order, adjacent ones of one owner within an hour merged;
// their intervals add up to interval_ms and their energy to energy_mj.
std::vector<SamplePiece> CutSample(TimeMs ts, std::int64_t interval_ms, std::int64_t energy_mj,
                                   const std::vector<Hold>* holds, TimeMs known_until);

}  // namespace spillway::metering
