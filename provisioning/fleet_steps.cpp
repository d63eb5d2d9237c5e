#include "provisioning/fleet_steps.hpp"

#include <memory>

#include "provisioning/heartbeats.hpp"
#include "core/periodic.hpp"

namespace spillway {

void RegisterFleetSteps(PeriodicSteps& steps, const FleetContext& fc) {
  const Millis tick = fc.settings.tick;
  const FleetContext* f = &fc;
  steps.Add({"spot_reprice", fc.settings.reprice_interval,
             [f](pqxx::connection& c, const StepContext&) { Reprice(c, *f); }});
  // Pools whose capacity changed (registrations), priced once per tick however many changed it.
  steps.Add({"reprice_marked_pools", tick,
             [f](pqxx::connection& c, const StepContext&) { RepriceMarkedPools(c, *f); }});
  // The pools' kept totals take in the hosts' capacity changes (pool_counts reads either way).
  steps.Add({"fold_pool_capacity", tick, [](pqxx::connection& c, const StepContext&) { FoldPoolCapacity(c); }});
  steps.Add({"finish_preemptions", tick, [f](pqxx::connection& c, const StepContext&) { FinishPreemptions(c, *f); }});
  // Heartbeats are written in batches by every replica: while one lags (its database writes fail,
  // or it is starved), what it heard is not in `hosts` yet, and nobody is judged on that time.
  const Millis timeout = fc.settings.silence.timeout;
  auto deaf_until = std::make_shared<TimeMs>();
  auto heard_since = [f, timeout, deaf_until](pqxx::connection& c, const StepContext& s) {
    if (HeartbeatWritersLagging(c, s.now, timeout / 2, timeout * 2)) *deaf_until = s.now;
    return std::max(s.listening_since, *deaf_until);
  };
  steps.Add({"fail_silent_hosts", tick, [f, heard_since](pqxx::connection& c, const StepContext& s) {
               FailSilentHosts(c, *f, heard_since(c, s));
             }});
  steps.Add({"fail_unreported_instances", tick, [f, heard_since](pqxx::connection& c, const StepContext& s) {
               FailUnreportedInstances(c, *f, heard_since(c, s));
             }});
  steps.Add({"place_pending", tick, [f](pqxx::connection& c, const StepContext&) { PlacePending(c, *f); }});
  steps.Add({"end_suspended_tenants_instances", tick,
             [f](pqxx::connection& c, const StepContext&) { EndSuspendedTenantsInstances(c, *f); }});
  steps.Add({"fleet_gauges", tick, [f](pqxx::connection& c, const StepContext&) { RefreshFleetGauges(c, *f); }});
}

}  // namespace spillway
