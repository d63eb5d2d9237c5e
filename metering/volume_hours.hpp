#pragma once
// Volume metering (a leader step): each volume's GB-milliseconds per closed UTC hour, from its
// creation to its deletion, into volume_usage_hourly; billing prices them per GB-month. Volumes
// themselves (create, attach, delete) are provisioning's.
#include <pqxx/pqxx>

#include "core/clock.hpp"

namespace spillway::metering {

// Meters every closed hour since the last run (volume_metering.metered_through; from the hour of
// the first volume's creation before any): GB-milliseconds per volume and hour. Returns the hours
// metered (at most a month's in one call).
int MeterVolumeHours(pqxx::connection& conn, TimeMs now);

}  // namespace spillway::metering
