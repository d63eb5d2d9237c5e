#include "provisioning/instances.hpp"

#include "accounts/tenants.hpp"
#include "billing/prices.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/money.hpp"
#include "core/pg_async.hpp"
#include "core/sql.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/fleet_metrics.hpp"

namespace spillway {
namespace {

// The env names, ports and volumes come unordered and are sorted in AccessFromJson: an ORDER BY
// inside an aggregate starts a sort for every row read (2-7 % of the statement's cost in PostgreSQL,
// by pgbench), and a bytewise order does not depend on the database's collation.
#define SPW_INSTANCE_COLUMNS                                                                                \
  "i.id, i.tenant_id, i.name, i.instance_type, i.region, i.market, i.max_price_micros, i.state, i.gpus, "  \
  "i.host_id, i.gpu_model, i.gpu_indices::text AS gpu_indices, i.end_reason, i.preempt_reason, "           \
  SPW_EPOCH_MS("i.created_at") " AS created_ms, " SPW_EPOCH_MS("i.started_at") " AS started_ms, "          \
  SPW_EPOCH_MS("i.ended_at") " AS ended_ms, " SPW_EPOCH_MS("i.preempt_at") " AS preempt_ms, "              \
  "CASE WHEN i.state = 'pending' THEN " SPW_EPOCH_MS(                                                      \
      "(SELECT max(p.preempt_at) FROM instances p WHERE p.host_id = i.host_id AND p.state = 'preempting')") \
  " END AS expected_ms, "                                                                                   \
  "i.image, i.min_cuda, i.disk_gb, to_json(i.command)::text AS command_json, "                             \
  "to_json(i.ssh_key_ids)::text AS ssh_key_ids_json, "                                                      \
  "coalesce((SELECT json_agg(k) FROM jsonb_object_keys(i.env) k), '[]')::text AS env_names_json, "        \
  "(SELECT coalesce(h.public_address, h.hostname) FROM hosts h WHERE h.id = i.host_id) AS address, "      \
  "coalesce((SELECT json_agg(json_build_object('port', p.internal_port, 'protocol', p.protocol, 'external', " \
  "CASE WHEN p.released_at IS NULL THEN p.external_port END)) "                                            \
  "FROM instance_ports p WHERE p.instance_id = i.id), '[]')::text AS ports_json, "                          \
  "coalesce((SELECT json_agg(json_build_object('volume_id', m.volume_id, 'mount_path', m.mount_path)) "      \
  "FROM instance_volumes m WHERE m.instance_id = i.id), '[]')::text AS volumes_json"

const Statement kInsertInstance{"insert_instance", R"sql(
INSERT INTO instances (id, tenant_id, name, instance_type, gpu_model, gpus, region, market, max_price_micros, state,
                       created_at)
VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6, $7, $8, $9::bigint, 'pending', $10::timestamptz))sql"};
const Statement kGetInstance{"get_instance", "SELECT " SPW_INSTANCE_COLUMNS " FROM instances i WHERE i.id = $1"};
const Statement kListInstances{"list_instances",
                               "SELECT " SPW_INSTANCE_COLUMNS " FROM instances i "
                               "WHERE i.id > $1 AND ($2 = '' OR i.tenant_id = $2) AND ($3 = '' OR i.host_id = $3) "
                               "AND ($4 = '' OR i.state = $4) AND ($5 = '' OR i.market = $5) ORDER BY i.id LIMIT $6"};
const Statement kRegionKnown{"region_known", "SELECT EXISTS (SELECT 1 FROM hosts WHERE region = $1) AS known"};
const Statement kTenantInstancesToStop{"tenant_instances_to_stop",
                                       "SELECT id FROM instances WHERE tenant_id = $1 AND instance_is_live(state) "
                                       "AND state <> 'terminating' ORDER BY id"};
// As the gpu_allocations trigger releases a hold: at the database's now (ingest's clock).
const Statement kEndHolds{"instance_end_holds",
                          "UPDATE gpu_allocation_history SET released_at = greatest(now(), allocated_at) "
                          "WHERE instance_id = $1 AND released_at IS NULL"};
const Statement kSetTerminating{"set_terminating",
                                "UPDATE instances SET state = 'terminating', end_reason = $2, version = version + 1 "
                                "WHERE id = $1"};

// One mapping for a libpqxx row and for an io thread's non-blocking read (PgRow).
template <class Row>
Instance InstanceFrom(const Row& r) {
  Instance i;
  i.id = r["id"].template as<std::string>();
  i.tenant_id = r["tenant_id"].template as<std::string>();
  i.name = TextFrom(r["name"]);
  i.instance_type = r["instance_type"].template as<std::string>();
  i.gpu_model = r["gpu_model"].template as<std::string>();
  i.region = r["region"].template as<std::string>();
  i.market = ParseMarket(r["market"].template as<std::string>()).value_or(Market::kOnDemand);
  i.max_price_micros = IntFrom(r["max_price_micros"]);
  i.state = ParseInstanceState(r["state"].template as<std::string>()).value_or(InstanceState::kFailed);
  i.gpus = r["gpus"].template as<std::int64_t>();
  i.host_id = TextFrom(r["host_id"]);
  i.gpu_indices = ParseIntArray(r["gpu_indices"].template as<std::string>());
  i.created_at = TimeFrom(r["created_ms"]).value_or(TimeMs{});
  i.started_at = TimeFrom(r["started_ms"]);
  i.ended_at = TimeFrom(r["ended_ms"]);
  i.preempt_at = TimeFrom(r["preempt_ms"]);
  i.end_reason = TextFrom(r["end_reason"]);
  i.preempt_reason = TextFrom(r["preempt_reason"]);
  i.expected_placement_at = TimeFrom(r["expected_ms"]);
  i.access = AccessFromJson(TextFrom(r["image"]), TextFrom(r["min_cuda"]), r["command_json"].template as<std::string>(),
                            r["env_names_json"].template as<std::string>(), r["ssh_key_ids_json"].template as<std::string>(),
                            IntFrom(r["disk_gb"]), TextFrom(r["address"]), r["ports_json"].template as<std::string>(),
                            r["volumes_json"].template as<std::string>());
  return i;
}

ApiError PlacementRefused(const FleetContext& fc, const char* reason, ApiError e) {
  if (fc.metrics) fc.metrics->PlacementFailed(reason);
  return e;
}

}  // namespace

// kListInstances' parameters, in its order, for libpqxx and for an io thread's connection alike.
std::vector<std::string> ListInstancesValues(const InstanceFilter& f) {
  return {f.after,
          f.tenant_id,
          f.host_id,
          f.state ? ToString(*f.state) : "",
          f.market ? ToString(*f.market) : "",
          std::to_string(f.limit)};
}

std::vector<Instance> ListInstances(Tx& tx, const InstanceFilter& f) {
  std::vector<Instance> out;
  for (const auto& r : tx.exec_prepared(kListInstances.name, pqxx::prepare::make_dynamic_params(ListInstancesValues(f))))
    out.push_back(InstanceFrom(r));
  return out;
}

std::optional<Instance> FindInstance(Tx& tx, const std::string& id) {
  const auto rows = tx.exec_prepared(kGetInstance.name, id);
  if (rows.empty()) return std::nullopt;
  return InstanceFrom(rows[0]);
}

const Statement& FindInstanceStatement() { return kGetInstance; }
std::optional<Instance> FoundInstance(const PgResult& rows) {
  if (rows.size() == 0) return std::nullopt;
  return InstanceFrom(rows[0]);
}

const Statement& ListInstancesStatement() { return kListInstances; }
std::vector<Instance> FoundInstances(const PgResult& rows) {
  std::vector<Instance> out;
  out.reserve(static_cast<size_t>(rows.size()));
  for (int i = 0; i < rows.size(); ++i) out.push_back(InstanceFrom(rows[i]));
  return out;
}

std::vector<std::string> InstancesToStop(Tx& tx, const std::string& tenant_id) {
  std::vector<std::string> ids;
  for (const auto& r : tx.exec_prepared(kTenantInstancesToStop.name, tenant_id)) ids.push_back(r["id"].as<std::string>());
  return ids;
}

Instance LaunchInstance(Tx& tx, const FleetContext& fc, const LaunchRequest& req) {
  const InstanceType& type = *req.type;
  const auto limit = LockTenantQuota(tx, req.tenant_id);
  if (!limit) throw ApiError(404, "not_found", "no such tenant");
  const std::int64_t used = TenantGpusInUse(tx, req.tenant_id);
  if (used + type.gpus > *limit)
    throw PlacementRefused(fc, "quota",
                           ApiError(409, "quota_exceeded",
                                    "this tenant's GPU quota is " + std::to_string(*limit) + " and " +
                                        std::to_string(used) + " are in use; " + std::to_string(type.gpus) +
                                        " more were asked"));
  if (!tx.exec_prepared(kRegionKnown.name, req.region)[0]["known"].as<bool>())
    throw ApiError(422, "validation_failed", "region: unknown region " + req.region);
  CheckLaunchSpec(req.spec);
  const auto authorized_keys = CheckLaunchReferences(tx, req.tenant_id, req.region, req.spec);
  LockPool(tx, req.region, type.gpu_model);
  const PoolState counts = LoadPoolCounts(tx, req.region, type.gpu_model);
  if (!counts.Offers(type.gpus))
    throw PlacementRefused(fc, "not_offered",
                           ApiError(422, "instance_type_not_offered",
                                    "no host in " + req.region + " offers " + type.name + " (" +
                                        std::to_string(type.gpus) + " " + type.gpu_model + " GPUs on one host)"));
  if (req.market == Market::kSpot && req.max_price_micros) {
    const auto spot = CurrentSpotPrice(tx, req.region, type.gpu_model);
    if (spot && *req.max_price_micros < *spot)
      throw PlacementRefused(fc, "price",
                             ApiError(409, "max_price_below_spot_price",
                                      "max_price_per_gpu_hour " + FormatMicros(*req.max_price_micros) +
                                          " is below the current spot price " + FormatMicros(*spot)));
  }
  const PlacementNeeds needs{type.gpus, req.market, req.spec.min_cuda,
                             static_cast<std::int64_t>(PortsToMap(req.spec).size())};
  PlacementPlan plan;
  try {
    plan = PlanNewInstance(tx, counts, needs);
  } catch (const ApiError& e) {
    throw PlacementRefused(fc, "insufficient_capacity", e);
  }
  const std::string id = NewId("ins");
  const auto max_price = TextOf(req.max_price_micros);
  tx.exec_prepared(kInsertInstance.name, id, req.tenant_id, req.name, type.name, type.gpu_model, type.gpus,
                   req.region, ToString(req.market), Nullable(max_price), FormatTime(fc.clock.Now()));
  if (!fc.secrets) throw std::logic_error("a launch needs the secret box to seal env values");
  SaveLaunchSpec(tx, id, req.spec, authorized_keys, *fc.secrets);
  ApplyPlacement(tx, fc, id, plan);
  return *FindInstance(tx, id);
}

std::optional<TerminateOutcome> TerminateInstance(Tx& tx, const std::string& id, const std::string& tenant_id,
                                                  const std::string& end_reason, TimeMs now) {
  // Lock order (docs/architecture.md): its host, then it.
  const auto locked = LockInstance(tx, id);
  if (!locked || (!tenant_id.empty() && locked->tenant_id != tenant_id)) return std::nullopt;
  bool changed = true;
  switch (locked->state) {
    case InstanceState::kPending:  // never got GPUs
      EndInstance(tx, id, InstanceState::kTerminated, end_reason, now);
      break;
    case InstanceState::kProvisioning:
    case InstanceState::kRunning:
    case InstanceState::kPreempting:
      tx.exec_prepared(kSetTerminating.name, id, end_reason);
      if (locked->host_id) BumpHost(tx, *locked->host_id);
      break;
    default:  // terminating, terminated, failed: already on its way out
      changed = false;
  }
  return TerminateOutcome{*FindInstance(tx, id), changed};
}

void EndBillingNow(Tx& tx, const std::string& instance_id) { tx.exec_prepared(kEndHolds.name, instance_id); }

}  // namespace spillway
