// How instances end: spot preemption with notice, its deadline, and a suspended tenant's instances.
#include "provisioning/fleet.hpp"

#include "provisioning/fleet_metrics.hpp"
#include "billing/spot_curve.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/log.hpp"
#include "core/sql.hpp"
#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "provisioning/instances.hpp"
#include "provisioning/words.hpp"
#include "provisioning/fleet_sql.hpp"

namespace spillway {
using namespace fleet_sql;

void PreemptSpot(pqxx::transaction_base& tx, const FleetContext& fc, const std::string& instance_id,
                 const std::string& reason) {
  const TimeMs preempt_at = fc.clock.Now() + fc.settings.preemption_notice;
  const auto r = tx.exec_prepared(kPreempt.name, instance_id, FormatTime(preempt_at), reason);
  if (r.empty()) return;  // already leaving or gone
  if (const auto host = TextFrom(r[0]["host_id"])) BumpHost(tx, *host);
  if (fc.metrics) fc.metrics->Preempted(r[0]["region"].as<std::string>(), r[0]["gpu_model"].as<std::string>(), reason);
  log::Info("spot instance preempted", {{"instance_id", instance_id}, {"reason", reason}});
}

void EndInstance(pqxx::transaction_base& tx, const std::string& instance_id, InstanceState state,
                 const std::string& end_reason, TimeMs now) {
  const auto r = tx.exec_prepared(kEndInstance.name, instance_id, ToString(state), end_reason, FormatTime(now));
  tx.exec_prepared(kFreeGpus.name, instance_id);
  ReleaseInstanceResources(tx, instance_id);
  if (r.empty()) return;  // it had ended already
  if (const auto host = TextFrom(r[0]["host_id"])) BumpHost(tx, *host);
}

int FinishPreemptions(Session& conn, const FleetContext& fc) {
  const TimeMs now = fc.clock.Now();
  std::vector<std::string> due;
  {
    pqxx::nontransaction read(conn);
    for (const auto& r : read.exec_prepared(kDuePreemptions.name, FormatTime(now))) due.push_back(r["id"].as<std::string>());
  }
  int n = 0;
  for (const auto& id : due)
    WithInstanceLocked(conn, id, [&](pqxx::transaction_base& tx, InstanceState state) {
      if (state != InstanceState::kPreempting) return;
      EndInstance(tx, id, InstanceState::kTerminated, "preempted", now);
      ++n;
    });
  return n;
}

int EndSuspendedTenantsInstances(pqxx::connection_base& conn, const FleetContext& fc) {
  const TimeMs now = fc.clock.Now(), cutoff = now - fc.settings.suspension_grace;
  std::vector<std::string> tenants;
  {
    pqxx::nontransaction read(conn);
    tenants = SuspendedWithLiveInstances(read, cutoff);
  }
  int total = 0;
  for (const auto& tenant : tenants) {
    std::vector<std::string> ids;
    {
      pqxx::nontransaction read(conn);
      ids = InstancesToStop(read, tenant);
    }
    int n = 0;
    for (const auto& id : ids)
      n += InTransaction(conn, [&](pqxx::work& tx) {
        // The tenant row first (the lock order), and still suspended: a resumption may have won.
        const auto t = LockTenant(tx, tenant);
        if (!t || t->status != TenantStatus::kSuspended || !t->suspended_at || *t->suspended_at > cutoff) return 0;
        const auto out = TerminateInstance(tx, id, tenant, "tenant_suspended", now);
        if (!out || !out->changed) return 0;
        RecordAudit(tx, SystemAudit(tenant, "instance.terminate", id));
        return 1;
      });
    if (n > 0) log::Info("suspended tenant's instances terminated", {{"tenant_id", tenant}, {"instances", n}});
    total += n;
  }
  return total;
}

}  // namespace spillway
