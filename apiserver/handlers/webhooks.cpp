#include "apiserver/handlers/webhooks.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <set>

#include "accounts/audit.hpp"
#include "accounts/tenants.hpp"
#include "apiserver/handlers/common.hpp"
#include "webhooks/delivery.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/json.hpp"
#include "core/secrets.hpp"
#include "core/text.hpp"
#include "webhooks/webhooks.hpp"

namespace spillway::handlers {
namespace {

constexpr std::size_t kEndpointsPerTenant = 20;

boost::json::object EndpointJson(const webhooks::Endpoint& e) {
  boost::json::array events;
  for (const auto& t : e.events) events.push_back(boost::json::value(t));
  return {{"id", e.id},
          {"tenant_id", JsonText(e.tenant_id)},
          {"url", e.url},
          {"events", std::move(events)},
          {"description", e.description},
          {"created_at", FormatTime(e.created_at)}};
}

bool Privileged(const Ctx& ctx) { return ctx.principal.role_bit == kFinance || ctx.principal.role_bit == kAdmin; }

}  // namespace

Reply CreateWebhook(Ctx& ctx) {
  const auto& body = RequireObject(ctx.body);
  OnlyKeys(body, {"url", "events", "description", "tenant_id"});
  const auto settings = webhooks::Settings::From(ctx.config);
  const std::string url = ReqString(body, "url", 2048);
  std::string why;
  if (!webhooks::ParseTarget(url, settings, &why)) throw InvalidInput(why);
  const auto* events_v = body.if_contains("events");
  if (!events_v || !events_v->is_array() || events_v->as_array().empty())
    throw InvalidInput("events: a non-empty array of event types");
  std::vector<std::string> events;
  for (const auto& v : events_v->as_array()) {
    const auto& known = webhooks::EventTypes();
    if (!v.is_string() || std::find(known.begin(), known.end(), std::string(v.as_string())) == known.end()) {
      std::string all;
      for (const auto& k : known) all += (all.empty() ? "" : ", ") + k;
      throw InvalidInput("events: each one of " + all);
    }
    if (std::find(events.begin(), events.end(), std::string(v.as_string())) == events.end())
      events.emplace_back(v.as_string());
  }
  const std::string description = OptString(body, "description", 200).value_or("");
  if (!IsOneLineText(description)) throw InvalidInput("description: one line of text");
  // Whose events: a member's own tenant's; finance and admins name one, or take every tenant's.
  std::optional<std::string> tenant = OptString(body, "tenant_id", 64);
  if (!Privileged(ctx)) tenant = ctx.OwnerTenant(tenant);
  if (!ctx.secrets) throw ApiError(503, "unavailable", "this server has no secrets key file to seal webhook secrets");
  const std::string secret = webhooks::NewSecret();
  webhooks::Endpoint e{NewId("whk"), tenant, url, events, description, "key:" + ctx.principal.key_id, ctx.clock.Now()};
  const std::string sealed = ctx.secrets->Seal(secret, kWebhookSecretContext);
  return ctx.Write([&](Tx& tx) {
    if (tenant) RequireTenant(tx, *tenant);
    if (tenant && webhooks::ListEndpoints(tx, tenant).size() >= kEndpointsPerTenant)
      throw ApiError(409, "too_many_webhooks", "a tenant has at most " + std::to_string(kEndpointsPerTenant) + " webhooks");
    webhooks::CreateEndpoint(tx, e, sealed);
    RecordAudit(tx, ctx.AuditOf(tenant.value_or(""), "webhook.create", e.id + " " + url));
    auto json = EndpointJson(e);
    json["secret"] = secret;  // shown this once; kept sealed
    return Reply{201, std::move(json)};
  });
}

Reply ListWebhooks(Ctx& ctx) {
  std::optional<std::string> tenant;
  if (!Privileged(ctx)) tenant = ctx.principal.tenant_id;
  else if (const std::string named = ctx.Query("tenant_id"); !named.empty()) tenant = named;
  const auto found = ctx.ReadSnapshot([&](Tx& tx) { return webhooks::ListEndpoints(tx, tenant); });
  boost::json::array data;
  for (const auto& e : found) data.push_back(EndpointJson(e));
  return {200, boost::json::object{{"data", std::move(data)}}};
}

Reply DeleteWebhook(Ctx& ctx) {
  const std::string id = ctx.Param("id");
  return ctx.Write([&](Tx& tx) {
    const auto found = webhooks::FindEndpoint(tx, id);
    // Another tenant's webhook is 404, as one that does not exist; so is every tenant's to a member.
    if (!found || (!Privileged(ctx) && found->tenant_id != ctx.principal.tenant_id))
      throw ApiError(404, "not_found", "no webhook " + id);
    webhooks::DeleteEndpoint(tx, id, ctx.clock.Now());
    RecordAudit(tx, ctx.AuditOf(found->tenant_id.value_or(""), "webhook.delete", id));
    return Reply{200, EndpointJson(*found)};
  });
}

}  // namespace spillway::handlers
