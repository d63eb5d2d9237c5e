#include "apiserver/handlers/instances.hpp"

#include <boost/json.hpp>
#include <set>

#include "apiserver/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "billing/prices.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/fleet_metrics.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "core/money.hpp"

namespace spillway::handlers {
namespace {

#define SPW_INSTANCE_COLUMNS                                                                             \
  "id, tenant_id, name, instance_type, region, market, max_price_micros, state, gpus, host_id, "        \
  "(extract(epoch FROM created_at) * 1000)::bigint, (extract(epoch FROM started_at) * 1000)::bigint, " \
  "(extract(epoch FROM ended_at) * 1000)::bigint, end_reason, (extract(epoch FROM preempt_at) * 1000)::bigint, " \
  "preempt_reason, gpu_model, gpu_indices"

const Statement kInsertInstance{"insert_instance", R"sql(
INSERT INTO instances (id, tenant_id, name, instance_type, gpu_model, gpus, region, market, max_price_micros, state)
VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6, $7, $8, NULLIF($9, 0), 'pending'))sql"};
const Statement kGetInstance{"get_instance", "SELECT " SPW_INSTANCE_COLUMNS " FROM instances WHERE id = $1"};
const Statement kListInstances{"list_instances",
                               "SELECT " SPW_INSTANCE_COLUMNS " FROM instances WHERE tenant_id = $1 AND id > $2 "
                               "AND ($3 = '' OR state = $3) AND ($4 = '' OR market = $4) ORDER BY id LIMIT $5"};
// The quota check is two statements on purpose: under READ COMMITTED a statement's snapshot is
// taken when it starts, so a sum read in the same statement as the lock would miss instances that
// the lock's previous holder committed while this one waited (10 concurrent creates against a
// quota of 2 once made 9 instances). The sum runs after the lock is granted and sees them all.
const Statement kLockTenantQuota{"lock_tenant_quota",
                                 "SELECT gpu_quota FROM tenants WHERE id = $1 FOR NO KEY UPDATE"};
const Statement kTenantGpusInUse{"tenant_gpus_in_use", R"sql(
SELECT COALESCE(sum(gpus), 0) FROM instances WHERE tenant_id = $1 AND state NOT IN ('terminated', 'failed'))sql"};
const Statement kRegionKnown{"region_known", "SELECT EXISTS (SELECT 1 FROM hosts WHERE region = $1)"};
const Statement kInstanceHost{"instance_host", "SELECT host_id FROM instances WHERE id = $1 AND tenant_id = $2"};
const Statement kLockInstance{"lock_instance",
                              "SELECT state, host_id FROM instances WHERE id = $1 AND tenant_id = $2 FOR UPDATE"};
const Statement kSetTerminating{"set_terminating",
                                "UPDATE instances SET state = 'terminating', version = version + 1 WHERE id = $1"};
boost::json::object InstanceJson(const pqxx::row& r) {
  boost::json::array indices;
  for (int i : ParseIntArray(r[17].as<std::string>())) indices.push_back(i);
  return {{"id", r[0].as<std::string>()},
          {"tenant_id", r[1].as<std::string>()},
          {"name", JsonText(r[2])},
          {"instance_type", r[3].as<std::string>()},
          {"region", r[4].as<std::string>()},
          {"market", r[5].as<std::string>()},
          {"max_price_per_gpu_hour",
           r[6].is_null() ? boost::json::value(nullptr) : boost::json::value(FormatMicros(r[6].as<std::int64_t>()))},
          {"state", r[7].as<std::string>()},
          {"gpus", r[8].as<std::int64_t>()},
          {"gpu_model", r[16].as<std::string>()},
          {"gpu_indices", std::move(indices)},
          {"host_id", JsonText(r[9])},
          {"created_at", JsonTime(r[10])},
          {"started_at", JsonTime(r[11])},
          {"ended_at", JsonTime(r[12])},
          {"end_reason", JsonText(r[13])},
          {"preempt_at", JsonTime(r[14])},
          {"preempt_reason", JsonText(r[15])}};
}

boost::json::object LoadInstanceJson(pqxx::transaction_base& tx, const std::string& id) {
  return InstanceJson(tx.exec_prepared(kGetInstance.name, id)[0]);
}

struct CreateRequest {
  const InstanceType* type;
  std::string region, market, name;
  std::int64_t max_price = 0;  // 0: none
};

CreateRequest ParseCreate(const Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"instance_type", "region", "market", "max_price_per_gpu_hour", "name"});
  CreateRequest req;
  const std::string type = ReqString(body, "instance_type", 100);
  req.type = ctx.config.FindInstanceType(type);
  if (!req.type) throw ApiError(422, "validation_failed", "instance_type: unknown instance type " + type);
  req.region = ReqString(body, "region", 100);
  req.market = ReqString(body, "market", 20);
  if (req.market != "on_demand" && req.market != "spot")
    throw ApiError(422, "validation_failed", "market: must be on_demand or spot");
  req.name = OptName(body, "name", 200).value_or("");
  if (const auto mp = OptString(body, "max_price_per_gpu_hour", 40)) {
    if (req.market != "spot")
      throw ApiError(422, "validation_failed", "max_price_per_gpu_hour: only spot instances take a max price");
    const auto micros = ParseMicros(*mp);
    if (!micros || *micros <= 0)
      throw ApiError(422, "validation_failed", "max_price_per_gpu_hour: must be a positive USD amount such as \"1.500000\"");
    req.max_price = *micros;
  }
  return req;
}

// Creates the instance and places it, in the caller's transaction; returns its id.
std::string CreateIn(pqxx::transaction_base& tx, Ctx& ctx, const CreateRequest& req) {
  const FleetContext fc{*ctx.fleet, ctx.fleet_metrics, ctx.clock};
  auto fail = [&](const char* reason, ApiError e) {
    if (fc.metrics) fc.metrics->PlacementFailed(reason);
    return e;
  };
  const std::int64_t limit = tx.exec_prepared(kLockTenantQuota.name, ctx.principal.tenant_id)[0][0].as<std::int64_t>();
  const std::int64_t used = tx.exec_prepared(kTenantGpusInUse.name, ctx.principal.tenant_id)[0][0].as<std::int64_t>();
  if (used + req.type->gpus > limit)
    throw fail("quota", ApiError(409, "quota_exceeded",
                                 "this tenant's GPU quota is " + std::to_string(limit) + " and " + std::to_string(used) +
                                     " are in use; " + std::to_string(req.type->gpus) + " more were asked"));
  if (!tx.exec_prepared(kRegionKnown.name, req.region)[0][0].as<bool>())
    throw ApiError(422, "validation_failed", "region: unknown region " + req.region);
  PoolState pool = LoadPool(tx, req.region, req.type->gpu_model, /*lock=*/true);
  if (req.market == "spot" && req.max_price > 0) {
    const auto spot = CurrentSpotPrice(tx, req.region, req.type->gpu_model);
    if (spot && req.max_price < *spot)
      throw fail("price", ApiError(409, "max_price_below_spot_price",
                                   "max_price_per_gpu_hour " + FormatMicros(req.max_price) +
                                       " is below the current spot price " + FormatMicros(*spot)));
  }
  PlacementPlan plan;
  try {
    plan = PlanPlacement(pool, req.type->gpus, req.market);
  } catch (const ApiError& e) {
    throw fail("insufficient_capacity", e);
  }
  const std::string id = NewId("ins");
  tx.exec_prepared(kInsertInstance.name, id, ctx.principal.tenant_id, req.name, req.type->name, req.type->gpu_model,
                   req.type->gpus, req.region, req.market, req.max_price);
  ApplyPlacement(tx, fc, id, plan);
  Audit(tx, ctx, ctx.principal.tenant_id, "instance.create", id);
  return id;
}

}  // namespace

Reply CreateInstance(Ctx& ctx) {
  const CreateRequest req = ParseCreate(ctx);
  return ctx.Write([&](pqxx::transaction_base& tx) {
    const std::string id = CreateIn(tx, ctx, req);
    return Reply{201, LoadInstanceJson(tx, id)};
  });
}

Reply ListInstances(Ctx& ctx) {
  const int limit = ctx.Limit();
  const std::string cursor = ctx.Query("cursor"), state = ctx.Query("state"), market = ctx.Query("market");
  if (!cursor.empty() && !IsValidId(cursor, "ins"))
    throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  static const std::set<std::string> kStates = {"pending", "provisioning", "running", "terminating",
                                                "terminated", "preempting", "failed"};
  if (!state.empty() && !kStates.count(state)) throw ApiError(400, "invalid_parameter", "state: unknown state " + state);
  if (!market.empty() && market != "on_demand" && market != "spot")
    throw ApiError(400, "invalid_parameter", "market must be on_demand or spot");
  pqxx::nontransaction tx(ctx.conn);
  const auto rows = tx.exec_prepared(kListInstances.name, ctx.principal.tenant_id, cursor, state, market, limit + 1);
  return {200, Page(rows, limit, InstanceJson)};
}

Reply GetInstance(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  pqxx::nontransaction tx(ctx.conn);
  const auto rows = IsValidId(id, "ins") ? tx.exec_prepared(kGetInstance.name, id) : pqxx::result();
  // Another tenant's instance is 404, never 403.
  if (rows.empty() || rows[0][1].as<std::string>() != ctx.principal.tenant_id)
    throw ApiError(404, "not_found", "no such instance");
  return {200, InstanceJson(rows[0])};
}

Reply TerminateInstance(Ctx& ctx) {
  const std::string& id = ctx.Param("id");
  if (!IsValidId(id, "ins")) throw ApiError(404, "not_found", "no such instance");
  return ctx.Write([&](pqxx::transaction_base& tx) {
    // Lock order (docs/architecture.md): the host before its instances, as heartbeats and
    // placement take them. The host is read first without a lock; if the instance moved to another
    // host meanwhile (a pending one being placed), lock that one too and look again.
    std::string host;
    for (;;) {
      const auto h = tx.exec_prepared(kInstanceHost.name, id, ctx.principal.tenant_id);
      if (h.empty()) throw ApiError(404, "not_found", "no such instance");
      host = h[0][0].is_null() ? "" : h[0][0].as<std::string>();
      if (!host.empty()) LockHost(tx, host);
      const auto rows = tx.exec_prepared(kLockInstance.name, id, ctx.principal.tenant_id);
      if (rows.empty()) throw ApiError(404, "not_found", "no such instance");
      const std::string now_host = rows[0][1].is_null() ? "" : rows[0][1].as<std::string>();
      if (now_host != host) continue;
      const std::string state = rows[0][0].as<std::string>();
      if (state == "pending") {
        EndInstance(tx, id, "terminated", "terminated");  // never got GPUs
      } else if (state == "provisioning" || state == "running" || state == "preempting") {
        tx.exec_prepared(kSetTerminating.name, id);
        if (!host.empty()) BumpHost(tx, host);
      }  // terminating, terminated, failed: already on its way out; answering again changes nothing
      if (state != "terminating" && state != "terminated" && state != "failed")
        Audit(tx, ctx, ctx.principal.tenant_id, "instance.terminate", id);
      return Reply{200, LoadInstanceJson(tx, id)};
    }
  });
}

}  // namespace spillway::handlers
