// Hearing hosts and judging silence: heartbeats recorded, silent hosts marked down (with the brake
// when a region goes quiet together), and instances their host stopped reporting.
#include "provisioning/fleet.hpp"

#include <algorithm>
#include <map>
#include <set>

#include "provisioning/fleet_metrics.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/log.hpp"
#include "core/sql.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

std::int64_t RecordHeartbeat(pqxx::transaction_base& tx, const std::string& host_id, const std::string& agent_version,
                             const std::vector<ReportedInstance>& reported, TimeMs now) {
  // The host row first (the lock order), then its instances in id order.
  const auto h = tx.exec_prepared(kHeartbeatHost.name, host_id, agent_version, FormatTime(now));
  if (h.empty()) throw ApiError(401, "unauthenticated", "unknown host");
  std::vector<const ReportedInstance*> ordered;
  for (const auto& r : reported) ordered.push_back(&r);
  std::sort(ordered.begin(), ordered.end(), [](auto* a, auto* b) { return a->id < b->id; });
  for (const ReportedInstance* rp : ordered) {
    const ReportedInstance& r = *rp;
    const auto row = tx.exec_prepared(kLockHostInstance.name, r.id, host_id);
    if (row.empty()) continue;  // not this host's: the agent will see it absent from its assignments
    const InstanceState state = StateOf(row[0]["state"]);
    if (!IsOnHost(state)) continue;
    if (r.state == "starting" || r.state == "running") {
      tx.exec_prepared(kReported.name, r.id, r.state == "running", FormatTime(now));
    } else if (r.state == "stopped") {
      if (state == InstanceState::kTerminating) EndInstance(tx, r.id, InstanceState::kTerminated, "terminated", now);
      else if (state == InstanceState::kPreempting) EndInstance(tx, r.id, InstanceState::kTerminated, "preempted", now);
      else EndInstance(tx, r.id, InstanceState::kFailed, "stopped_on_host", now);
    } else if (r.state == "failed") {
      EndInstance(tx, r.id, InstanceState::kFailed, "failed_on_host", now);
    }
  }
  // Re-read: ending an instance above bumps the version the agent should wait on.
  return tx.exec_prepared(kHostVersionOf.name, host_id)[0]["assignment_version"].as<std::int64_t>();
}

SilenceVerdict JudgeSilence(const std::vector<HostHealth>& hosts, TimeMs now, TimeMs heard_since,
                            const SilenceRules& rules) {
  struct Region {
    std::int64_t counted = 0, quiet = 0;
    std::vector<std::string> silent;
  };
  std::map<std::string, Region> regions;
  for (const auto& h : hosts) {
    if (h.disabled) continue;
    // Time before heard_since is not held against anyone: the control plane was not listening.
    const TimeMs heard = std::max(h.last_heartbeat, heard_since);
    const Millis silent_for = std::chrono::duration_cast<Millis>(now - heard);
    Region& r = regions[h.region];
    if (h.up) {
      ++r.counted;
      if (silent_for * 2 > rules.timeout) ++r.quiet;
      if (silent_for > rules.timeout) r.silent.push_back(h.id);
    } else if (h.down_since && now - *h.down_since <= rules.timeout) {
      ++r.counted;  // went down just now: part of what is happening to the region
      ++r.quiet;
    }
  }
  SilenceVerdict v;
  for (auto& [name, r] : regions) {
    if (r.silent.empty()) continue;
    const bool brake = r.counted >= rules.brake_min_hosts && r.quiet * 100 > rules.brake_percent * r.counted;
    if (brake) v.braking_regions.push_back(name);
    auto& into = brake ? v.brake : v.fail;
    into.insert(into.end(), r.silent.begin(), r.silent.end());
  }
  return v;
}

int FailSilentHosts(Session& conn, const FleetContext& fc, TimeMs heard_since) {
  const TimeMs now = fc.clock.Now();
  std::vector<HostHealth> hosts;
  std::map<std::string, std::int64_t> seen_heartbeat;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kHostHealth.name)) {
      HostHealth h;
      h.id = r["id"].as<std::string>();
      h.region = r["region"].as<std::string>();
      h.up = r["health"].as<std::string>() == "up";
      h.disabled = r["state"].as<std::string>() == "disabled";
      const auto heartbeat_ms = r["heartbeat_ms"].as<std::int64_t>();
      h.last_heartbeat = FromEpochMs(heartbeat_ms);
      if (const auto down_ms = IntFrom(r["down_since_ms"])) h.down_since = FromEpochMs(*down_ms);
      h.braked = !r["braked"].is_null() && r["braked"].as<bool>();
      seen_heartbeat[h.id] = heartbeat_ms;
      hosts.push_back(std::move(h));
    }
  }
  const SilenceVerdict verdict = JudgeSilence(hosts, now, heard_since, fc.settings.silence);
  for (const auto& region : verdict.braking_regions)
    log::Error("many hosts of a region fell silent together: marking them down WITHOUT failing their instances "
               "(the silence brake); check the network and the agents",
               {{"region", region}});
  if (fc.metrics) {
    // Per region, hosts held down by the brake with their instances kept: an SRE must look at them.
    const std::set<std::string> braking_now(verdict.brake.begin(), verdict.brake.end());
    std::map<std::string, std::int64_t> braked;
    for (const auto& h : hosts) braked[h.region] += (h.braked || braking_now.count(h.id)) ? 1 : 0;
    for (const auto& [region, n] : braked) fc.metrics->SilenceBrake(region, n);
  }
  int failed = 0;
  // One transaction per host, the host locked first; a heartbeat that arrived since the read
  // (last_heartbeat changed) saves the host.
  auto mark = [&](const std::string& host, const char* reason, bool fail_instances) {
    InTransaction(conn, [&](pqxx::work& tx) {
      if (tx.exec_prepared(kMarkDown.name, host, FormatTime(now), reason, seen_heartbeat[host]).empty()) return;
      if (fc.metrics) fc.metrics->HostDown(reason);
      if (!fail_instances) {
        log::Warn("host fell silent with much of its region: marked down, instances kept", {{"host_id", host}});
        return;
      }
      log::Warn("host missed its heartbeats: marked down, its instances failed", {{"host_id", host}});
      for (const auto& i : tx.exec_prepared(kOnHost.name, host)) {
        EndInstance(tx, i["id"].as<std::string>(), InstanceState::kFailed, "host_down", now);
        ++failed;
      }
    });
  };
  for (const auto& host : verdict.fail) mark(host, "silent", true);
  for (const auto& host : verdict.brake) mark(host, "mass_silence", false);
  return failed;
}

int FailUnreportedInstances(Session& conn, const FleetContext& fc, TimeMs heard_since) {
  const TimeMs now = fc.clock.Now();
  const Millis grace = fc.settings.instance_report_grace;
  if (now - heard_since <= grace) return 0;  // not listening long enough to judge anyone
  std::vector<std::string> ids;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kUnreported.name, FormatTime(now - grace))) ids.push_back(r["id"].as<std::string>());
  }
  int n = 0;
  for (const auto& id : ids)
    WithInstanceLocked(conn, id, [&](pqxx::transaction_base& tx, InstanceState state) {
      if (state == InstanceState::kTerminating)
        EndInstance(tx, id, InstanceState::kTerminated, "terminated", now);
      else if (state == InstanceState::kProvisioning || state == InstanceState::kRunning ||
               state == InstanceState::kPreempting)
        EndInstance(tx, id, InstanceState::kFailed, "lost", now);
      else
        return;
      ++n;
    });
  return n;
}

}  // namespace spillway
