#include "metering/attribution.hpp"

#include <algorithm>

namespace spillway::metering {

std::vector<SamplePiece> CutSample(TimeMs ts, std::int64_t interval_ms, std::int64_t energy_mj,
                                   const std::vector<Hold>* holds, TimeMs known_until) {
  const std::int64_t end = EpochMs(ts);
  const std::int64_t begin = end - interval_ms;
  std::vector<std::int64_t> cuts{begin, end};
  for (std::int64_t h = HourOfEnd(FromEpochMs(begin + 1)) + kHourMs; h < end; h += kHourMs) cuts.push_back(h);
  // Each hold as [from, to) in ms, open ones ending at known_until.
  std::vector<std::pair<std::int64_t, std::int64_t>> held;
  if (holds)
    for (const Hold& hold : *holds) {
      const std::int64_t from = EpochMs(hold.from);
      const std::int64_t to = EpochMs(hold.to ? *hold.to : known_until);
      if (to <= from) continue;
      held.emplace_back(from, to);
      for (const std::int64_t edge : {from, to})
        if (edge > begin && edge < end) cuts.push_back(edge);
    }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

  std::vector<SamplePiece> pieces;
  for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
    const std::int64_t a = cuts[k], b = cuts[k + 1];
    // Cut at every edge, so a stretch is either wholly inside a hold or wholly outside all of them.
    const bool mine = std::any_of(held.begin(), held.end(), [&](const auto& h) { return h.first <= a && b <= h.second; });
    if (!pieces.empty() && pieces.back().attributed == mine && HourOfEnd(pieces.back().ts) == HourOfEnd(FromEpochMs(b))) {
      pieces.back().ts = FromEpochMs(b);
      pieces.back().interval_ms += b - a;
      continue;
    }
    pieces.push_back({FromEpochMs(b), b - a, mine, 0});
  }
  // Energy shared by time, from cumulative shares so that the pieces add up to the whole exactly.
  std::int64_t given = 0;
  for (std::size_t k = 0; k < pieces.size(); ++k) {
    const std::int64_t upto = EpochMs(pieces[k].ts) - begin;
    const auto share = static_cast<std::int64_t>(static_cast<__int128>(energy_mj) * upto / interval_ms);
    pieces[k].energy_mj = share - given;
    given = share;
  }
  return pieces;
}

}  // namespace spillway::metering
