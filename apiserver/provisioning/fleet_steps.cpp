#include "apiserver/provisioning/fleet_steps.hpp"

#include "core/periodic.hpp"

namespace spillway {

void RegisterFleetSteps(PeriodicSteps& steps, const FleetContext& fc) {
  const Millis tick = fc.config.Duration("controllers.tick");
  const FleetContext* f = &fc;
  steps.Add({"spot_reprice", fc.config.Duration("spot.reprice_interval"),
             [f](pqxx::connection& c, const StepContext&) { Reprice(c, *f); }});
  steps.Add({"finish_preemptions", tick, [f](pqxx::connection& c, const StepContext&) { FinishPreemptions(c, *f); }});
  steps.Add({"fail_silent_hosts", tick,
             [f](pqxx::connection& c, const StepContext& s) { FailSilentHosts(c, *f, s.listening_since); }});
  steps.Add({"fail_unreported_instances", tick,
             [f](pqxx::connection& c, const StepContext& s) { FailUnreportedInstances(c, *f, s.listening_since); }});
  steps.Add({"place_pending", tick, [f](pqxx::connection& c, const StepContext&) { PlacePending(c, *f); }});
  steps.Add({"fleet_gauges", tick, [f](pqxx::connection& c, const StepContext&) { RefreshFleetGauges(c, *f); }});
}

}  // namespace spillway
