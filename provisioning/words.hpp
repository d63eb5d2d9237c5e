#pragma once
// The fleet's words, each with its one string table: an instance's state and market, and "live".
// SQL has the same definition of live once, as the function instance_is_live(state) (migration
// 0006), which every statement and partial index uses; a pg test checks the two agree.
#include <optional>
#include <string_view>

namespace spillway {

enum class InstanceState { kPending, kProvisioning, kRunning, kPreempting, kTerminating, kTerminated, kFailed };
inline constexpr InstanceState kAllInstanceStates[] = {
    InstanceState::kPending,     InstanceState::kProvisioning, InstanceState::kRunning, InstanceState::kPreempting,
    InstanceState::kTerminating, InstanceState::kTerminated,   InstanceState::kFailed};
const char* ToString(InstanceState s);
std::optional<InstanceState> ParseInstanceState(std::string_view s);
// Live: holds or waits for GPUs, counts against quota and capacity (not terminated or failed).
constexpr bool IsLive(InstanceState s) { return s != InstanceState::kTerminated && s != InstanceState::kFailed; }

enum class Market { kOnDemand, kSpot };
const char* ToString(Market m);
std::optional<Market> ParseMarket(std::string_view s);

}  // namespace spillway
