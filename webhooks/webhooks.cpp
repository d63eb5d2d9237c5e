#include "webhooks/webhooks.hpp"

#include <algorithm>
#include <stdexcept>

#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/ids.hpp"
#include "core/sql.hpp"

namespace spillway::webhooks {
namespace {

const Statement kInsertEvent{"webhook_insert_event", R"sql(
INSERT INTO webhook_events (id, type, tenant_id, data, created_at) VALUES ($1, $2, $3, $4::jsonb, )sql" SPW_TS(5) ")"};
const Statement kFanOut{"webhook_fan_out", R"sql(
INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at)
SELECT $1, id, )sql" SPW_TS(4) R"sql( FROM webhook_endpoints
WHERE deleted_at IS NULL AND $2 = ANY(events) AND (tenant_id IS NULL OR tenant_id = $3))sql"};
const Statement kInsertEndpoint{"webhook_insert_endpoint", R"sql(
INSERT INTO webhook_endpoints (id, tenant_id, url, events, description, secret_sealed, created_by, created_at)
VALUES ($1, nullif($2, ''), $3, $4::text[], $5, $6, $7, )sql" SPW_TS(8) ")"};
#define SPW_ENDPOINT_COLUMNS                                                                                  \
  "id, tenant_id, url, array_to_string(events, ',') AS events, description, created_by, " SPW_EPOCH_MS("created_at") \
  " AS created_ms"
const Statement kListEndpoints{"webhook_list_endpoints", "SELECT " SPW_ENDPOINT_COLUMNS
                               " FROM webhook_endpoints WHERE deleted_at IS NULL AND ($1 = '*' OR tenant_id = $1) "
                               "ORDER BY created_at, id"};
const Statement kFindEndpoint{"webhook_find_endpoint",
                              "SELECT " SPW_ENDPOINT_COLUMNS " FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL"};
const Statement kDeleteEndpoint{"webhook_delete_endpoint",
                                "UPDATE webhook_endpoints SET deleted_at = " SPW_TS(2)
                                " WHERE id = $1 AND deleted_at IS NULL RETURNING id"};
const Statement kDropPending{"webhook_drop_pending",
                             "DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND delivered_at IS NULL"};
// The body is built from the stored event (jsonb prints the same way every time), so every attempt
// sends the same bytes.
// Per endpoint its oldest due deliveries, at most $3 each, of endpoints not in $4 (those with
// deliveries still in flight): each endpoint is a queue of its own, so one that hangs or fails
// holds up only its own deliveries. The body is built from the stored event (jsonb prints the same
// way every time), so every attempt sends the same bytes.
const Statement kDue{"webhook_due", R"sql(
SELECT q.event_id, q.endpoint_id, q.attempts, q.url, q.secret_sealed, q.type, q.body, q.created_ms FROM (
  SELECT d.event_id, d.endpoint_id, d.attempts, e.url, e.secret_sealed, v.type, d.next_attempt_at, v.seq,
         json_build_object('id', v.id, 'type', v.type, 'created_at',
                           to_char(v.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                           'tenant_id', v.tenant_id, 'data', v.data)::text AS body,
         )sql" SPW_EPOCH_MS("v.created_at") R"sql( AS created_ms,
         row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, v.seq) AS place
  FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN webhook_events v ON v.id = d.event_id
  WHERE d.delivered_at IS NULL AND d.failed_at IS NULL AND d.next_attempt_at <= )sql" SPW_TS(1) R"sql(
    AND e.deleted_at IS NULL AND NOT (d.endpoint_id = ANY($4::text[]))) q
WHERE q.place <= $3
ORDER BY q.next_attempt_at, q.seq LIMIT $2)sql"};
const Statement kDelivered{"webhook_delivered", R"sql(
UPDATE webhook_deliveries SET delivered_at = )sql" SPW_TS(3) R"sql(, attempts = attempts + 1, last_status = $4,
  last_error = NULL
WHERE event_id = $1 AND endpoint_id = $2 AND delivered_at IS NULL)sql"};
const Statement kFailed{"webhook_failed", R"sql(
UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = nullif($3, 0), last_error = $4,
  next_attempt_at = )sql" SPW_TS(5) R"sql(, failed_at = CASE WHEN $6 THEN )sql" SPW_TS(7) R"sql( END
WHERE event_id = $1 AND endpoint_id = $2 AND delivered_at IS NULL)sql"};
const Statement kBacklog{"webhook_backlog", R"sql(
SELECT count(*) AS n FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.delivered_at IS NULL AND d.failed_at IS NULL AND e.deleted_at IS NULL)sql"};

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    auto end = s.find(sep, start);
    if (end == std::string::npos) end = s.size();
    std::string part = s.substr(start, end - start);
    const auto a = part.find_first_not_of(' '), b = part.find_last_not_of(' ');
    if (a != std::string::npos) out.push_back(part.substr(a, b - a + 1));
    start = end + 1;
  }
  return out;
}

Endpoint EndpointFrom(const pqxx::row& r) {
  return {r["id"].as<std::string>(),          TextFrom(r["tenant_id"]),
          r["url"].as<std::string>(),         Split(r["events"].as<std::string>(), ','),
          r["description"].as<std::string>(), r["created_by"].as<std::string>(),
          *TimeFrom(r["created_ms"])};
}

}  // namespace

const std::vector<std::string>& EventTypes() {
  static const std::vector<std::string> types = {"invoice.finalized",  "credit_note.created",
                                                 "balance.low",        "spend_limit.reached",
                                                 "instance.stopped_for_funds", "usage.late"};
  return types;
}

std::string Emit(Tx& tx, const std::string& type, const std::string& tenant_id, const std::string& data_json,
                 TimeMs now) {
  if (std::find(EventTypes().begin(), EventTypes().end(), type) == EventTypes().end())
    throw std::logic_error("unknown webhook event type " + type);
  const std::string id = NewId("evt");
  tx.exec_prepared(kInsertEvent.name, id, type, tenant_id, data_json, EpochMs(now));
  tx.exec_prepared(kFanOut.name, id, type, tenant_id, EpochMs(now));
  return id;
}

Settings Settings::From(const Config& config) {
  Settings s;
  s.http_hosts = Split(config.String("webhooks.http_hosts"), ',');
  s.timeout = config.Duration("webhooks.timeout");
  s.retry_base = config.Duration("webhooks.retry_base");
  s.retry_max = config.Duration("webhooks.retry_max");
  s.max_attempts = static_cast<int>(config.Int("webhooks.max_attempts"));
  s.ca_file = config.String("webhooks.ca_file");
  return s;
}

std::optional<Target> ParseTarget(const std::string& url, const Settings& settings, std::string* error) {
  const auto fail = [&](const std::string& why) -> std::optional<Target> {
    if (error) *error = why;
    return std::nullopt;
  };
  if (url.size() > 2048) return fail("url: at most 2048 characters");
  for (unsigned char c : url)
    if (c <= 0x20 || c >= 0x7F) return fail("url: no spaces or characters outside printable ASCII");
  Target t;
  std::string rest;
  if (url.rfind("https://", 0) == 0) t.scheme = "https", rest = url.substr(8);
  else if (url.rfind("http://", 0) == 0) t.scheme = "http", rest = url.substr(7);
  else return fail("url: an https:// URL (or http:// to a host webhooks.http_hosts allows)");
  if (url.find('#') != std::string::npos) return fail("url: no fragment");
  const auto slash = rest.find_first_of("/?");
  std::string authority = rest.substr(0, slash);
  t.target = slash == std::string::npos ? "/" : rest.substr(slash);
  if (t.target[0] == '?') t.target.insert(0, "/");
  if (authority.find('@') != std::string::npos) return fail("url: no user name or password in it");
  if (!authority.empty() && authority[0] == '[') {
    const auto close = authority.find(']');
    if (close == std::string::npos) return fail("url: an unclosed [IPv6 address]");
    t.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return fail("url: a malformed host");
      t.port = authority.substr(close + 2);
    }
  } else {
    const auto colon = authority.rfind(':');
    t.host = authority.substr(0, colon);
    if (colon != std::string::npos) t.port = authority.substr(colon + 1);
  }
  if (t.host.empty()) return fail("url: no host");
  if (t.port.empty()) t.port = t.scheme == "https" ? "443" : "80";
  if (t.port.size() > 5 || t.port.find_first_not_of("0123456789") != std::string::npos || std::stoi(t.port) == 0 ||
      std::stoi(t.port) > 65535)
    return fail("url: a port of 1 to 65535");
  if (t.scheme == "http" &&
      std::find(settings.http_hosts.begin(), settings.http_hosts.end(), t.host) == settings.http_hosts.end())
    return fail("url: plain http is allowed only to the hosts in webhooks.http_hosts; use https");
  return t;
}

void CreateEndpoint(Tx& tx, const Endpoint& e, const std::string& secret_sealed) {
  tx.exec_prepared(kInsertEndpoint.name, e.id, e.tenant_id.value_or(""), e.url, TextArrayLiteral(e.events),
                   e.description, secret_sealed, e.created_by, EpochMs(e.created_at));
}

std::vector<Endpoint> ListEndpoints(Tx& tx, const std::optional<std::string>& tenant_id) {
  std::vector<Endpoint> out;
  for (const auto& r : tx.exec_prepared(kListEndpoints.name, tenant_id.value_or("*"))) out.push_back(EndpointFrom(r));
  return out;
}

std::optional<Endpoint> FindEndpoint(Tx& tx, const std::string& id) {
  const auto r = tx.exec_prepared(kFindEndpoint.name, id);
  if (r.empty()) return std::nullopt;
  return EndpointFrom(r[0]);
}

bool DeleteEndpoint(Tx& tx, const std::string& id, TimeMs now) {
  if (tx.exec_prepared(kDeleteEndpoint.name, id, EpochMs(now)).empty()) return false;
  tx.exec_prepared(kDropPending.name, id);
  return true;
}

std::string NewSecret() { return "whsec_" + Base64UrlEncode(RandomBytes(32)); }

std::string Signature(const std::string& secret, std::int64_t unix_seconds, const std::string& body) {
  const std::string t = std::to_string(unix_seconds);
  return "t=" + t + ",v1=" + HmacSha256Hex(secret, t + "." + body);
}

std::vector<Due> DueDeliveries(Tx& tx, TimeMs now, int limit, int per_endpoint,
                               const std::vector<std::string>& busy_endpoints) {
  std::vector<Due> out;
  for (const auto& r : tx.exec_prepared(kDue.name, EpochMs(now), limit, per_endpoint, TextArrayLiteral(busy_endpoints)))
    out.push_back({r["event_id"].as<std::string>(), r["endpoint_id"].as<std::string>(), r["type"].as<std::string>(),
                   r["url"].as<std::string>(), r["secret_sealed"].as<std::string>(), r["body"].as<std::string>(),
                   r["attempts"].as<int>(), *TimeFrom(r["created_ms"])});
  return out;
}

void RecordAttempt(Tx& tx, const Due& d, bool delivered, int status, const std::string& error, TimeMs now,
                   const Settings& settings) {
  if (delivered) {
    tx.exec_prepared(kDelivered.name, d.event_id, d.endpoint_id, EpochMs(now), status);
    return;
  }
  const int attempts = d.attempts + 1;
  // retry_base × 2^(attempts - 1), at most retry_max.
  Millis wait = settings.retry_base;
  for (int i = 1; i < attempts && wait < settings.retry_max; ++i) wait *= 2;
  wait = std::min(wait, settings.retry_max);
  const bool give_up = attempts >= settings.max_attempts;
  tx.exec_prepared(kFailed.name, d.event_id, d.endpoint_id, status, error.substr(0, 500), EpochMs(now + wait), give_up,
                   EpochMs(now));
}

std::int64_t Backlog(Tx& tx) { return tx.exec_prepared1(kBacklog.name)["n"].as<std::int64_t>(); }

}  // namespace spillway::webhooks
