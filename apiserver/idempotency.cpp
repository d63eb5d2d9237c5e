#include "apiserver/idempotency.hpp"

#include <boost/json.hpp>

#include "apiserver/errors.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"

namespace spillway {
namespace {

const Statement kLockKey{"idempotency_lock", R"sql(
SELECT pg_try_advisory_xact_lock(hashtextextended('idempotency' || chr(10) || $1 || chr(10) || $2, 0)) AS locked)sql"};
const Statement kReadKey{"idempotency_read", R"sql(
SELECT request_hash, response_status, response_body, created_at < $3::timestamptz AS expired
FROM idempotency_keys WHERE tenant_id = $1 AND key = $2)sql"};
const Statement kDeleteKey{"idempotency_delete", "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"};
const Statement kStoreKey{"idempotency_store", R"sql(
INSERT INTO idempotency_keys (tenant_id, key, request_hash, state, response_status, response_body, created_at)
VALUES ($1, $2, $3, 'done', $4, $5, $6::timestamptz))sql"};
const Statement kExpireKeys{"idempotency_expire", "DELETE FROM idempotency_keys WHERE created_at < $1::timestamptz"};

std::string Timestamp(TimeMs t) { return FormatTime(t); }

bool ValidKey(const std::string& key) {
  if (key.empty() || key.size() > 255) return false;
  for (unsigned char c : key)
    if (c < 0x21 || c > 0x7e) return false;
  return true;
}

// Worth replaying: a success, or a refusal that the same request will always get. Not a 409
// (capacity, quota or a race may change) or a 5xx (the server's trouble, not the request's).
bool Storable(int status) { return status < 400 || (status < 500 && status != 409 && status != 429); }

}  // namespace

Reply RunIdempotent(Ctx& ctx, Handler handler, const std::string& key, Millis ttl) {
  if (!ValidKey(key))
    throw ApiError(400, "invalid_parameter", "Idempotency-Key must be 1 to 255 visible ASCII characters");
  const std::string& scope = ctx.principal.tenant_id;
  const std::string hash =
      Sha256Hex(ctx.request.method + " " + ctx.request.path + "\n" + CanonicalJson(ctx.body));
  const TimeMs now = ctx.clock.Now();
  return InTransaction(ctx.conn, [&](pqxx::work& tx) -> Reply {
    if (!tx.exec_prepared(kLockKey.name, scope, key)[0]["locked"].as<bool>())
      throw ApiError(409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still in progress");
    const auto row = tx.exec_prepared(kReadKey.name, scope, key, Timestamp(now - ttl));
    if (!row.empty() && !row[0]["expired"].as<bool>()) {
      if (row[0]["request_hash"].as<std::string>() != hash)
        throw ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request");
      return Reply{row[0]["response_status"].as<int>(), ParseJsonBody(row[0]["response_body"].as<std::string>()),
                   {{"Idempotent-Replayed", "true"}}};
    }
    if (!row.empty()) tx.exec_prepared(kDeleteKey.name, scope, key);  // expired: the key starts afresh

    Reply reply;
    {
      pqxx::subtransaction attempt(tx, "idempotent_request");
      ctx.outer = &attempt;
      try {
        reply = handler(ctx);
        ctx.outer = nullptr;
        attempt.commit();
      } catch (const ApiError& e) {
        ctx.outer = nullptr;
        if (!Storable(e.status)) throw;
        attempt.abort();  // the refusal is the answer; whatever the handler wrote is undone
        const auto error = ErrorResponseFor(e, ctx.request.request_id);
        reply = Reply{e.status, ParseJsonBody(error.body), error.headers};
      } catch (...) {
        ctx.outer = nullptr;
        throw;
      }
    }
    if (Storable(reply.status))
      tx.exec_prepared(kStoreKey.name, scope, key, hash, reply.status, ToJson(reply.body), Timestamp(now));
    return reply;
  });
}

int ExpireIdempotencyKeys(Session& conn, TimeMs now, Millis ttl) {
  pqxx::nontransaction tx(conn);
  return static_cast<int>(tx.exec_prepared(kExpireKeys.name, Timestamp(now - ttl)).affected_rows());
}

}  // namespace spillway
