// The fleet's settings, read once from the config.
#include "provisioning/fleet.hpp"

#include "billing/spot_curve.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/money.hpp"
#include "core/sql.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

FleetSettings FleetSettings::From(const Config& c) {
  FleetSettings s;
  s.silence = {c.Duration("fleet.heartbeat_timeout"), c.Int("fleet.silence_brake_percent"),
               c.Int("fleet.silence_brake_min_hosts")};
  s.instance_report_grace = c.Duration("fleet.instance_report_grace");
  s.assignment_wait_max = c.Duration("fleet.assignment_wait_max");
  s.heartbeat_flush_interval = c.Duration("fleet.heartbeat_flush_interval");
  s.heartbeat_interval = c.Duration("agent.heartbeat_interval");
  s.sample_interval = c.Duration("agent.sample_interval");
  s.tick = c.Duration("controllers.tick");
  s.reprice_interval = c.Duration("spot.reprice_interval");
  s.preemption_notice = c.Duration("spot.preemption_notice");
  s.suspension_grace = c.Duration("tenants.suspension_grace");
  std::string why;
  auto curve = SpotCurve::Parse(c.String("spot.discount_curve"), &why);
  if (!curve) throw ConfigError("spot.discount_curve = \"" + c.String("spot.discount_curve") + "\": " + why);
  const auto floor = ParseMicros(c.String("spot.floor"));  // checked by the schema (CheckMoney)
  s.spot = SpotPolicy{*curve, c.Int("spot.smoothing_percent"), floor.value_or(0)};
  return s;
}

}  // namespace spillway
