#pragma once
// The fleet's words, each with its one string table: an instance's state and market, "live" and
// "on its host". SQL has the same definition of live once, as the function instance_is_live(state)
// (migration 0006), which every statement and partial index uses, and "on its host" as
// SPW_ON_HOST, written with it; a pg test checks that C++ and SQL agree on both.
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
// On its host: live and placed (not pending), what a host runs, reports and is told about.
constexpr bool IsOnHost(InstanceState s) { return IsLive(s) && s != InstanceState::kPending; }
// The same in SQL, of a state column or expression: "WHERE " SPW_ON_HOST("i.state").
#define SPW_ON_HOST(state) "(instance_is_live(" state ") AND " state " <> 'pending')"

enum class Market { kOnDemand, kSpot };
const char* ToString(Market m);
std::optional<Market> ParseMarket(std::string_view s);

}  // namespace spillway
