#include "provisioning/words.hpp"

namespace spillway {
namespace {
constexpr const char* kStateNames[] = {"pending",    "provisioning", "running", "preempting",
                                       "terminating", "terminated",  "failed"};
constexpr const char* kMarketNames[] = {"on_demand", "spot"};
}  // namespace

const char* ToString(InstanceState s) { return kStateNames[static_cast<int>(s)]; }

std::optional<InstanceState> ParseInstanceState(std::string_view s) {
  for (InstanceState st : kAllInstanceStates)
    if (s == ToString(st)) return st;
  return std::nullopt;
}

const char* ToString(Market m) { return kMarketNames[static_cast<int>(m)]; }

std::optional<Market> ParseMarket(std::string_view s) {
  if (s == "on_demand") return Market::kOnDemand;
  if (s == "spot") return Market::kSpot;
  return std::nullopt;
}

}  // namespace spillway
