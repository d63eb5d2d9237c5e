#pragma once
#include "provisioning/fleet.hpp"

namespace spillway {
class PeriodicSteps;

// The fleet's periodic steps: preemption deadlines, silent hosts, unreported instances, pending
// placements, the spot pricer and the fleet gauges. `fc` must outlive `steps`.
void RegisterFleetSteps(PeriodicSteps& steps, const FleetContext& fc);
}  // namespace spillway
