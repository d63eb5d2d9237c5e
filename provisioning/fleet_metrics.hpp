#pragma once
#include <cstdint>
#include <string>

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Gauge;
}  // namespace prometheus

namespace spillway {

// The fleet's Prometheus series (issue: metrics for SREs). Counters move where events happen, in
// any replica; gauges are refreshed by the elected controller replica.
struct FleetMetrics {
  explicit FleetMetrics(prometheus::Registry& registry);
  void Preempted(const std::string& region, const std::string& gpu_model, const std::string& reason);
  void PlacementFailed(const std::string& reason);
  void HostDown(const std::string& reason);                       // silent | mass_silence
  void SilenceBrake(const std::string& region, std::int64_t braked_hosts);

  prometheus::Family<prometheus::Gauge>* gpus;          // spillway_gpus{region,gpu_model,use}
  prometheus::Family<prometheus::Gauge>* instances;     // spillway_instances{state,market}
  prometheus::Family<prometheus::Counter>* preemptions; // spillway_preemptions_total{region,gpu_model,reason}
  prometheus::Gauge* heartbeat_age;                     // spillway_agent_heartbeat_age_seconds
  prometheus::Family<prometheus::Counter>* placement_failures;  // spillway_placement_failures_total{reason}
  prometheus::Family<prometheus::Gauge>* spot_price;    // spillway_spot_price_per_gpu_hour{region,gpu_model}
  prometheus::Family<prometheus::Gauge>* spot_floor;    // spillway_spot_price_floor_per_gpu_hour{region,gpu_model}
  prometheus::Family<prometheus::Counter>* hosts_down;  // spillway_hosts_marked_down_total{reason}
  prometheus::Family<prometheus::Gauge>* silence_brake; // spillway_fleet_silence_brake{region}
  prometheus::Family<prometheus::Gauge>* hosts;         // spillway_hosts{health,state}
};

}  // namespace spillway
