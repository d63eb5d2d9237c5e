#pragma once
// Webhooks (docs/architecture.md, "Webhooks"): the events Spillway tells receivers about, written
// into an outbox in the same transaction as the change each reports, and the endpoints and
// deliveries the leader's webhook_deliveries step works off (apiserver/webhook_steps), at least once:
// a receiver deduplicates by the event's id. Each request is signed with HMAC-SHA256 over
// "<timestamp>.<body>" under the endpoint's secret.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db_fwd.hpp"

namespace spillway::webhooks {

// invoice.finalized, credit_note.created, balance.low, spend_limit.reached, instance.stopped_for_funds,
// usage.late.
const std::vector<std::string>& EventTypes();

// Writes an event of `type` about `tenant_id` with `data_json` (a JSON object) in `tx`, and queues
// one delivery for each live endpoint subscribed to `type` that sees that tenant's events (its own,
// or an endpoint of every tenant's). Returns the event's id ("evt_…").
std::string Emit(Tx& tx, const std::string& type, const std::string& tenant_id, const std::string& data_json,
                 TimeMs now);

struct Settings {
  std::vector<std::string> http_hosts;  // webhooks.http_hosts: where plain http is allowed
  Millis timeout{5000}, retry_base{10000}, retry_max{3600000};
  int max_attempts = 25;
  std::string ca_file;
  static Settings From(const Config& config);
};

// A target URL split up: scheme "https" or "http", host, port, and the request target ("/path?q").
struct Target {
  std::string scheme, host, port, target;
};
// The URL as a target, or a message saying what is wrong with it: it must be https, or http to a
// host `settings` allows; no user info, no fragment.
std::optional<Target> ParseTarget(const std::string& url, const Settings& settings, std::string* error);

struct Endpoint {
  std::string id;
  std::optional<std::string> tenant_id;  // nullopt: every tenant's events
  std::string url;
  std::vector<std::string> events;
  std::string description, created_by;
  TimeMs created_at{};
};
void CreateEndpoint(Tx& tx, const Endpoint& e, const std::string& secret_sealed);
// Live endpoints: one tenant's (`tenant_id`), or every one (nullopt).
std::vector<Endpoint> ListEndpoints(Tx& tx, const std::optional<std::string>& tenant_id);
std::optional<Endpoint> FindEndpoint(Tx& tx, const std::string& id);
// Deletes it (its pending deliveries are dropped). False when there was none.
bool DeleteEndpoint(Tx& tx, const std::string& id, TimeMs now);

// A new signing secret: "whsec_" and 32 random bytes, base64url.
std::string NewSecret();
// The Spillway-Signature header's value: "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>".
std::string Signature(const std::string& secret, std::int64_t unix_seconds, const std::string& body);

// Deliveries due now, oldest first: the event's body as sent, the endpoint's URL and sealed secret.
struct Due {
  std::string event_id, endpoint_id, type, url, secret_sealed, body;
  int attempts = 0;
  TimeMs event_created_at{};
};
// At most `limit` in all and `per_endpoint` of each endpoint (its oldest due), none of the endpoints
// in `busy_endpoints`: every endpoint is a queue of its own.
std::vector<Due> DueDeliveries(Tx& tx, TimeMs now, int limit, int per_endpoint,
                               const std::vector<std::string>& busy_endpoints = {});
// The outcome of one attempt: delivered (a 2xx), or tried again later, or given up after the last.
void RecordAttempt(Tx& tx, const Due& d, bool delivered, int status, const std::string& error, TimeMs now,
                   const Settings& settings);
// Deliveries neither delivered nor given up (the spillway_webhook_backlog gauge).
std::int64_t Backlog(Tx& tx);

}  // namespace spillway::webhooks
