#include "provisioning/fleet_metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

namespace spillway {

FleetMetrics::FleetMetrics(prometheus::Registry& r) {
  using namespace prometheus;
  gpus = &BuildGauge().Name("spillway_gpus").Help("GPUs per pool by use: on_demand, spot, internal, free").Register(r);
  instances = &BuildGauge().Name("spillway_instances").Help("Instances by state and market").Register(r);
  preemptions = &BuildCounter()
                     .Name("spillway_preemptions_total")
                     .Help("Spot instances preempted, by pool and reason (reservation, price, capacity)")
                     .Register(r);
  heartbeat_age = &BuildGauge()
                       .Name("spillway_agent_heartbeat_age_seconds")
                       .Help("Seconds since the stalest heartbeat of a host that is up")
                       .Register(r)
                       .Add({});
  placement_failures = &BuildCounter()
                            .Name("spillway_placement_failures_total")
                            .Help("Instance creates refused, by reason")
                            .Register(r);
  spot_price = &BuildGauge()
                    .Name("spillway_spot_price_per_gpu_hour")
                    .Help("Current spot price per GPU-hour in USD, by pool")
                    .Register(r);
  spot_floor = &BuildGauge()
                    .Name("spillway_spot_price_floor_per_gpu_hour")
                    .Help("The lowest the spot price may go per GPU-hour in USD (spot.floor, at most the list price), "
                          "by pool: a price held here means the pool's spare capacity does not sell")
                    .Register(r);
  hosts_down = &BuildCounter()
                    .Name("spillway_hosts_marked_down_total")
                    .Help("Hosts marked down for silence, by reason: silent (instances failed) or mass_silence "
                          "(the brake: instances kept)")
                    .Register(r);
  hosts_down->Add({{"reason", "silent"}});
  hosts_down->Add({{"reason", "mass_silence"}});
  hosts = &BuildGauge()
               .Name("spillway_hosts")
               .Help("Hosts by health (up, down: heartbeats) and state (active, draining, disabled: the operator)")
               .Register(r);
  silence_brake = &BuildGauge()
                       .Name("spillway_fleet_silence_brake")
                       .Help("Hosts of a region held down by the silence brake (many fell silent together): "
                             "their instances were kept, not failed; look at the network and the agents")
                       .Register(r);
}

void FleetMetrics::Preempted(const std::string& region, const std::string& gpu_model, const std::string& reason) {
  preemptions->Add({{"region", region}, {"gpu_model", gpu_model}, {"reason", reason}}).Increment();
}

void FleetMetrics::PlacementFailed(const std::string& reason) { placement_failures->Add({{"reason", reason}}).Increment(); }

}  // namespace spillway

namespace spillway {
void FleetMetrics::HostDown(const std::string& reason) { hosts_down->Add({{"reason", reason}}).Increment(); }
void FleetMetrics::SilenceBrake(const std::string& region, std::int64_t braked_hosts) {
  silence_brake->Add({{"region", region}}).Set(static_cast<double>(braked_hosts));
}
}  // namespace spillway
