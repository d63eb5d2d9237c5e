#pragma once
// Attribution to the millisecond: the agent tells the meter, whenever it looks at its instances,
// which instance runs on which GPU; each sampling tick then turns one reading per GPU into samples
// that each cover one stretch with one owner. An interval in which an instance started or stopped
// is split, so the instance's first and last samples cover only its running part, and idle time
// becomes a sample with no instance (fleet utilisation, never billed). Time before the meter
// started, or more than 3 sample intervals back (a stalled agent), is not claimed.
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "agent/sampler.hpp"
#include "protocol/agent.hpp"

namespace spillway::agent {

class Meter {
 public:
  Meter(const std::vector<int>& gpu_indices, std::chrono::milliseconds sample_interval, TimeMs start);
  // From `t` on, `running` (GPU index -> instance id) runs; a GPU not in it is idle.
  void Observe(TimeMs t, const std::map<int, std::string>& running);
  bool Busy(int gpu) const;
  void SetInterval(std::chrono::milliseconds sample_interval);
  // The samples for each GPU's time since its last tick, up to `now`.
  std::vector<protocol::Sample> Tick(TimeMs now, const std::vector<GpuReading>& readings);

 private:
  struct Gpu {
    TimeMs last{};                            // covered up to here
    std::optional<std::string> owner;         // at `last`
    std::vector<std::pair<TimeMs, std::optional<std::string>>> changes;  // after `last`, in order
    std::optional<std::int64_t> energy_mj;    // the counter at `last`
  };
  mutable std::mutex mu_;
  std::chrono::milliseconds interval_;
  std::map<int, Gpu> gpus_;
};

}  // namespace spillway::agent
