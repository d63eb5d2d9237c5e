#include "agent/meter.hpp"

#include <algorithm>

namespace spillway::agent {

Meter::Meter(const std::vector<int>& gpu_indices, std::chrono::milliseconds sample_interval, TimeMs start)
    : interval_(sample_interval) {
  for (int g : gpu_indices) gpus_[g].last = start;
}

void Meter::SetInterval(std::chrono::milliseconds sample_interval) {
  std::lock_guard lk(mu_);
  interval_ = sample_interval;
}

void Meter::Observe(TimeMs t, const std::map<int, std::string>& running) {
  std::lock_guard lk(mu_);
  for (auto& [g, gpu] : gpus_) {
    std::optional<std::string> now_owner;
    if (auto it = running.find(g); it != running.end()) now_owner = it->second;
    const auto& latest = gpu.changes.empty() ? gpu.owner : gpu.changes.back().second;
    if (latest == now_owner) continue;
    if (t <= gpu.last) gpu.owner = now_owner;  // no time has passed since the last tick
    else gpu.changes.emplace_back(t, now_owner);
  }
}

bool Meter::Busy(int gpu) const {
  std::lock_guard lk(mu_);
  auto it = gpus_.find(gpu);
  if (it == gpus_.end()) return false;
  return (it->second.changes.empty() ? it->second.owner : it->second.changes.back().second).has_value();
}

std::vector<protocol::Sample> Meter::Tick(TimeMs now, const std::vector<GpuReading>& readings) {
  std::lock_guard lk(mu_);
  std::vector<protocol::Sample> out;
  for (const auto& r : readings) {
    auto it = gpus_.find(r.index);
    if (it == gpus_.end()) continue;
    Gpu& gpu = it->second;
    const TimeMs from = std::max(gpu.last, now - 3 * interval_);
    // The owner at `from`, then the stretches up to now.
    std::optional<std::string> owner = gpu.owner;
    std::vector<std::pair<TimeMs, std::optional<std::string>>> stretches;  // (end, owner)
    for (const auto& [t, next] : gpu.changes) {
      if (t <= from) {
        owner = next;
        continue;
      }
      if (t >= now) break;
      stretches.emplace_back(t, owner);
      owner = next;
    }
    stretches.emplace_back(now, owner);
    // What the GPU itself integrated since the last tick, else power x time; shared by length.
    const std::int64_t span_ms = (now - from).count();
    std::int64_t energy = r.power_mw * span_ms / 1000;
    if (r.energy_total_mj && gpu.energy_mj && *r.energy_total_mj >= *gpu.energy_mj) {
      const std::int64_t counted = *r.energy_total_mj - *gpu.energy_mj;
      const std::int64_t since_last = (now - gpu.last).count();
      energy = since_last > 0 ? counted * span_ms / since_last : 0;
    }
    TimeMs begin = from;
    std::int64_t energy_left = energy;
    for (std::size_t i = 0; i < stretches.size(); ++i) {
      const auto& [end, who] = stretches[i];
      const std::int64_t length = (end - begin).count();
      if (length > 0) {
        const std::int64_t e = i + 1 == stretches.size() ? energy_left : (span_ms > 0 ? energy * length / span_ms : 0);
        energy_left -= e;
        out.push_back({end, r.index, who, length, r.util_pct, r.mem_used_bytes, r.power_mw, std::max<std::int64_t>(0, e)});
      }
      begin = end;
    }
    // Changes at or after now stay for the next tick.
    std::vector<std::pair<TimeMs, std::optional<std::string>>> later;
    for (auto& c : gpu.changes)
      if (c.first >= now) later.push_back(std::move(c));
    gpu.changes = std::move(later);
    gpu.owner = owner;
    gpu.last = now;
    gpu.energy_mj = r.energy_total_mj;
  }
  return out;
}

}  // namespace spillway::agent
