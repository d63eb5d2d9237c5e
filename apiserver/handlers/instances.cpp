#include "apiserver/handlers/instances.hpp"

#include <boost/json.hpp>
#include <set>

#include "apiserver/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "apiserver/provisioning/fleet.hpp"
#include "apiserver/provisioning/fleet_metrics.hpp"
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
const Statement kLockTenantQuota{"lock_tenant_quota", R"sql(
SELECT t.gpu_quota, COALESCE((SELECT sum(gpus) FROM instances i
                              WHERE i.tenant_id = t.id AND i.state NOT IN ('terminated', 'failed')), 0)
FROM tenants t WHERE t.id = $1 FOR NO KEY UPDATE)sql"};
const Statement kRegionKnown{"region_known", "SELECT EXISTS (SELECT 1 FROM hosts WHERE region = $1)"};
const Statement kLockInstance{"lock_instance",
                              "SELECT state, host_id, region, gpu_model FROM instances WHERE id = $1 AND tenant_id = $2 FOR UPDATE"};
const Statement kSetTerminating{"set_terminating",
                                "UPDATE instances SET state = 'terminating', version = version + 1 WHERE id = $1"};
const Statement kClaimIdempotency{"claim_idempotency", R"sql(
INSERT INTO idempotency_keys (tenant_id, key, request_hash, state) VALUES ($1, $2, $3, 'in_flight')
ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1)sql"};
const Statement kReadIdempotency{"read_idempotency", R"sql(
SELECT request_hash, state, response_status, response_body, instance_id,
       created_at < now() - $3::bigint * interval '1 millisecond' AS expired,
       created_at < now() - interval '60 seconds' AS abandoned
FROM idempotency_keys WHERE tenant_id = $1 AND key = $2)sql"};
const Statement kRetakeIdempotency{"retake_idempotency", R"sql(
UPDATE idempotency_keys SET request_hash = $3, state = 'in_flight', response_status = NULL, response_body = NULL,
       instance_id = NULL, created_at = now()
WHERE tenant_id = $1 AND key = $2)sql"};
const Statement kFinishIdempotency{"finish_idempotency", R"sql(
UPDATE idempotency_keys SET state = 'done', response_status = $3, response_body = NULLIF($4, ''),
       instance_id = NULLIF($5, '')
WHERE tenant_id = $1 AND key = $2)sql"};
const Statement kDropIdempotency{"drop_idempotency", "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"};


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
  req.name = OptString(body, "name", 200).value_or("");
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
std::string CreateIn(pqxx::work& tx, Ctx& ctx, const CreateRequest& req) {
  FleetContext fc{ctx.config, ctx.fleet_metrics};
  auto fail = [&](const char* reason, ApiError e) {
    if (fc.metrics) fc.metrics->PlacementFailed(reason);
    return e;
  };
  const auto quota = tx.exec_prepared(kLockTenantQuota.name, ctx.principal.tenant_id);
  const std::int64_t limit = quota[0][0].as<std::int64_t>(), used = quota[0][1].as<std::int64_t>();
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
  const std::string& tenant = ctx.principal.tenant_id;
  const std::string key = ctx.request.Header("idempotency-key");
  if (key.size() > 255) throw ApiError(400, "invalid_parameter", "Idempotency-Key must be at most 255 characters");
  if (key.empty()) {
    pqxx::work tx(ctx.conn);
    const std::string id = CreateIn(tx, ctx, req);
    auto json = LoadInstanceJson(tx, id);
    tx.commit();
    return {201, std::move(json)};
  }

  // Idempotency: the key is claimed in its own committed transaction, so a second request with it
  // sees "in flight" (409) rather than waiting; the outcome is stored with the create itself.
  const std::string hash = Sha256Hex(boost::json::serialize(ctx.body));
  const auto ttl = ctx.config.Duration("idempotency.ttl").count();
  {
    pqxx::work claim(ctx.conn);
    bool claimed = !claim.exec_prepared(kClaimIdempotency.name, tenant, key, hash).empty();
    if (!claimed) {
      const auto row = claim.exec_prepared(kReadIdempotency.name, tenant, key, ttl);
      const bool expired = !row.empty() && row[0][5].as<bool>();
      const bool abandoned = !row.empty() && row[0][1].as<std::string>() == "in_flight" && row[0][6].as<bool>();
      if (row.empty() || expired || abandoned) {
        claim.exec_prepared(kRetakeIdempotency.name, tenant, key, hash);
        claimed = true;
      } else if (row[0][0].as<std::string>() != hash) {
        throw ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request body");
      } else if (row[0][1].as<std::string>() == "in_flight") {
        throw ApiError(409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still in progress");
      } else {
        const int status = row[0][2].as<int>();
        if (!row[0][4].is_null()) {
          auto json = LoadInstanceJson(claim, row[0][4].as<std::string>());
          return {status, std::move(json), {{"Idempotent-Replayed", "true"}}};
        }
        return {status, boost::json::parse(row[0][3].as<std::string>()), {{"Idempotent-Replayed", "true"}}};
      }
    }
    claim.commit();
  }
  try {
    pqxx::work tx(ctx.conn);
    const std::string id = CreateIn(tx, ctx, req);
    tx.exec_prepared(kFinishIdempotency.name, tenant, key, 201, std::string(), id);
    auto json = LoadInstanceJson(tx, id);
    tx.commit();
    return {201, std::move(json)};
  } catch (const ApiError& e) {
    // A refusal is the answer for this key too (retrying the same request gets the same answer).
    pqxx::work done(ctx.conn);
    boost::json::object err{{"error", boost::json::object{{"code", e.code}, {"message", e.what()},
                                                          {"request_id", ctx.request.request_id}}}};
    done.exec_prepared(kFinishIdempotency.name, tenant, key, e.status, boost::json::serialize(err), std::string());
    done.commit();
    throw;
  } catch (const std::exception&) {
    try {
      pqxx::work drop(ctx.conn);
      drop.exec_prepared(kDropIdempotency.name, tenant, key);
      drop.commit();
    } catch (const std::exception& e2) {
      log::Warn("could not release an idempotency key", {{"error", e2.what()}});
    }
    throw;
  }
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
  pqxx::work tx(ctx.conn);
  const auto rows = IsValidId(id, "ins") ? tx.exec_prepared(kLockInstance.name, id, ctx.principal.tenant_id) : pqxx::result();
  if (rows.empty()) throw ApiError(404, "not_found", "no such instance");
  const std::string state = rows[0][0].as<std::string>();
  if (state == "pending") {
    EndInstance(tx, id, "terminated", "terminated");  // never got GPUs
  } else if (state == "provisioning" || state == "running" || state == "preempting") {
    tx.exec_prepared(kSetTerminating.name, id);
    BumpHost(tx, rows[0][1].as<std::string>());
  }  // terminating, terminated, failed: already on its way out; answering again changes nothing
  if (state != "terminating" && state != "terminated" && state != "failed")
    Audit(tx, ctx, ctx.principal.tenant_id, "instance.terminate", id);
  auto json = LoadInstanceJson(tx, id);
  tx.commit();
  return {200, std::move(json)};
}

}  // namespace spillway::handlers
