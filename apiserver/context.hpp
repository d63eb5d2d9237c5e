#pragma once
// What a handler sees: plain types only (no Beast). Handlers run on a database worker thread, or,
// for routes marked inline_read, on the io thread with a lent connection (Database::TakeInline).
#include <boost/json/value.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "apiserver/http/message.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db_fwd.hpp"
#include "accounts/roles.hpp"

namespace spillway {

struct AuditRecord;
class SecretBox;
struct FleetMetrics;
class KeyCache;
class HeartbeatRecorder;
struct FleetSettings;
namespace metering {
class Ingestor;
}
class Billing;

struct Principal {
  std::string host_id;  // for kHost
  std::string key_id;
  std::string tenant_id;
  std::string role;
  unsigned role_bit = 0;
  bool is_operator = false;  // the key belongs to the operator's own tenant
  // Signed in through a console session (cookie), not the key itself: the session, its CSRF token
  // and its end.
  std::string session_id, session_csrf;
  TimeMs session_expires_at{};
};

// A member may name only its own tenant: another tenant is 404, never 403 (a member cannot even
// learn that it exists).
void RequireTenantOf(const Principal& principal, const std::string& tenant_id);

// A request's query (percent-decoded), for handlers (Ctx) and non-blocking reads (AsyncRead) alike.
using QueryParams = std::map<std::string, std::string>;
// ?name=, empty when absent.
std::string QueryText(const QueryParams& query, const std::string& name);
// ?name= as an integer in [min, max] (dflt when absent), 400 on anything else.
std::int64_t QueryInt(const QueryParams& query, const std::string& name, std::int64_t dflt, std::int64_t min,
                      std::int64_t max);
// ?limit= (1..max, default dflt).
int QueryLimit(const QueryParams& query, int dflt = 50, int max = 200);

struct Ctx {
  const http::Request& request;
  std::map<std::string, std::string> params;  // from the path pattern
  boost::json::value body;                    // null when the request had none
  Principal principal;
  Session& conn;
  const Config& config;
  const Clock& clock;
  FleetMetrics* fleet_metrics = nullptr;
  bool long_poll_retry = false;  // the second run of a long-polling handler: answer now
  KeyCache* key_cache = nullptr;  // told at once of revocations and suspensions committed here
  // Set while the route runs inside the idempotency record's transaction: writes join it, so the
  // change and the stored answer commit together or not at all.
  Tx* outer = nullptr;
  HeartbeatRecorder* heartbeats = nullptr;  // heartbeats' fast path (may be null: tools, tests)
  const FleetSettings* fleet = nullptr;     // the fleet's typed configuration
  metering::Ingestor* ingest = nullptr;     // sample batches' group committer (may be null: tools)
  const SecretBox* secrets = nullptr;       // seals and opens tenants' env values (may be null: tools)
  Billing* billing = nullptr;               // billing's settings and metrics (may be null: tools)

  // Runs fn(tx) in a transaction of its own (retried when it loses a race, see InTransaction), or
  // inside the idempotency record's transaction when there is one. Returns what fn returns.
  template <class Fn>
  auto Write(Fn&& fn) {
    return Collect(fn, [this](const std::function<void(Tx&)>& run) { RunWrite(run); });
  }
  // A read of single statements (no transaction: each statement sees what is committed).
  template <class Fn>
  auto Read(Fn&& fn) {
    return Collect(fn, [this](const std::function<void(Tx&)>& run) { RunRead(run, false); });
  }
  // A read of several statements that must agree: one repeatable-read snapshot.
  template <class Fn>
  auto ReadSnapshot(Fn&& fn) {
    return Collect(fn, [this](const std::function<void(Tx&)>& run) { RunRead(run, true); });
  }

  const std::string& Param(const std::string& name) const { return params.at(name); }
  // 404 unless the caller may see tenant `tenant_id` (a member only its own; other roles all).
  void RequireTenant(const std::string& tenant_id) const;
  // The free functions above, on this request's query.
  std::int64_t QueryInt(const std::string& name, std::int64_t dflt, std::int64_t min, std::int64_t max) const {
    return spillway::QueryInt(request.query, name, dflt, min, max);
  }
  int Limit(int dflt = 50, int max = 200) const { return QueryLimit(request.query, dflt, max); }
  std::string Query(const std::string& name) const { return QueryText(request.query, name); }
  // Whose resources a tenant-owned route (SSH keys, volumes) acts on: a member's own tenant (naming
  // another is 404); an admin must name one, `named` (else 400).
  std::string OwnerTenant(const std::optional<std::string>& named) const;
  // OwnerTenant of ?tenant_id=.
  std::string OwnerTenantFromQuery() const;
  // The actor's audit record for a change to `target` (of tenant_id; "" for the fleet's own).
  AuditRecord AuditOf(const std::string& tenant_id, const std::string& action, const std::string& target) const;

 private:
  void RunWrite(const std::function<void(Tx&)>& run);
  void RunRead(const std::function<void(Tx&)>& run, bool snapshot);
  template <class Fn, class Runner>
  static auto Collect(Fn& fn, Runner&& runner) {
    using R = decltype(fn(std::declval<Tx&>()));
    if constexpr (std::is_void_v<R>) {
      runner([&](Tx& tx) { fn(tx); });
    } else {
      std::optional<R> result;
      runner([&](Tx& tx) { result.emplace(fn(tx)); });  // a retried transaction replaces it
      return std::move(*result);
    }
  }
};

// A repeatable-read snapshot of its own on `conn`, for a streamed reply's producer (Reply::stream_body).
void ReadSnapshotOn(Session& conn, const std::function<void(Tx&)>& run);

struct Reply {
  int status = 200;
  boost::json::value body;
  std::vector<std::pair<std::string, std::string>> headers = {};
  // A long poll: when set, the dispatcher answers only once this host's assignments change or
  // long_poll_ms passes, by running the handler again with Ctx::long_poll_retry set.
  std::string long_poll_host = {};
  std::int64_t long_poll_ms = 0;
  // A body that is not JSON (CSV, say): sent as is under this content type when it is set.
  std::string content_type = {};
  std::string raw_body = {};
  // A body made as it is sent (an export of any size; content_type says what it is): run on the
  // database worker once the head has gone, on the worker's connection, writing to the stream.
  // The status is sent by then, so whatever can be refused (a bad period, another tenant) is
  // checked before the reply is returned; what the producer throws cuts the response off.
  std::function<void(Session&, http::BodyStream&)> stream_body = {};
};

using Handler = Reply (*)(Ctx&);

class PgResult;
class Statement;
using Params = std::map<std::string, std::string>;
// The non-blocking form of a one-statement read (core/pg_async), answered on the io thread with
// no thread waiting on PostgreSQL: the statement, its parameters for a request (throwing ApiError
// as the handler would: a malformed id or query, another tenant's), and the reply made from its
// answer. `params` are the path's, `query` the request's.
struct AsyncRead {
  const Statement& (*statement)();
  std::vector<std::string> (*params)(const Principal& principal, const Params& params, const QueryParams& query);
  Reply (*render)(const Principal& principal, const Params& params, const QueryParams& query, const PgResult& rows);
};

// A route's path without a database connection (Route::fast_path), on the io thread that parsed
// the request: an agent's routine calls, thousands a second on a large fleet. The caller is
// already known (its key in the key cache, its role allowed) and the body is JSON. Returns false,
// having answered nothing, when the request must take the route's usual handler instead.
struct FastCall {
  const http::Request& request;
  const Principal& principal;
  const std::string& route;  // the pattern, for the response's metrics label
  http::Responder& respond;
  HeartbeatRecorder* heartbeats;
  metering::Ingestor* ingest;
  const Clock& clock;
};
using FastPath = bool (*)(FastCall& call);

}  // namespace spillway
