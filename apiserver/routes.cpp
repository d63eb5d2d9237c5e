// The one route table. Every route names the roles that may call it; tests/e2e/auth_walk_test.cpp
// walks this same table with no key, a wrong-role key and another tenant's key.
#include "apiserver/app.hpp"
#include "apiserver/handlers/api_keys.hpp"
#include "apiserver/handlers/audit.hpp"
#include "apiserver/handlers/billing_prices.hpp"
#include "apiserver/handlers/console.hpp"
#include "apiserver/handlers/funds.hpp"
#include "apiserver/handlers/invoices.hpp"
#include "apiserver/handlers/agent.hpp"
#include "apiserver/handlers/samples.hpp"
#include "apiserver/handlers/ssh_keys.hpp"
#include "apiserver/handlers/volumes.hpp"
#include "apiserver/handlers/webhooks.hpp"
#include "apiserver/handlers/usage.hpp"
#include "apiserver/handlers/capacity.hpp"
#include "apiserver/handlers/catalog.hpp"
#include "apiserver/handlers/hosts.hpp"
#include "apiserver/handlers/instances.hpp"
#include "apiserver/handlers/tenants.hpp"
#include "core/errors.hpp"

namespace spillway {
namespace {
Reply NotUsed(Ctx&) { throw ApiError(500, "internal", "served without a handler"); }
}  // namespace

std::vector<Route> ApiRoutes() {
  using namespace handlers;
  return {
      {"GET", "/v1/openapi.yaml", kUnauthenticated, NotUsed},
      {"POST", "/v1/console/sessions", kUnauthenticated, SignIn, Body::kRequired},
      {"GET", "/v1/console/session", kAnyRole, GetConsoleSession},
      {"DELETE", "/v1/console/session", kAnyRole, SignOut},
      {"POST", "/v1/tenants", kAdmin, CreateTenant, Body::kRequired},
      {"GET", "/v1/tenants", kAdmin | kFinance, ListTenants},
      {"GET", "/v1/tenants/{id}", kAdmin | kFinance | kMember, GetTenant, Body::kNone, "id", false, /*inline_read=*/true,
       &kGetTenantAsync},
      {"PATCH", "/v1/tenants/{id}", kAdmin, UpdateTenant, Body::kRequired, "id"},
      {"POST", "/v1/tenants/{id}/api-keys", kAdmin | kMember, CreateApiKey, Body::kRequired, "id"},
      {"GET", "/v1/tenants/{id}/api-keys", kAdmin | kMember, ListApiKeys, Body::kNone, "id", false, /*inline_read=*/true},
      {"DELETE", "/v1/tenants/{id}/api-keys/{key_id}", kAdmin | kMember, RevokeApiKey, Body::kNone, "id"},
      {"GET", "/v1/instance-types", kAnyRole, ListInstanceTypes},
      {"GET", "/v1/spot-prices", kAnyRole, ListSpotPrices},
      {"GET", "/v1/spot-prices/latest", kAnyRole, ListLatestSpotPrices, Body::kNone, "", false, /*inline_read=*/true},
      {"POST", "/v1/instances", kMember, CreateInstance, Body::kRequired, "", /*idempotent=*/true},
      {"GET", "/v1/instances", kMember | kOperator | kAdmin, ListInstances, Body::kNone, "", false, /*inline_read=*/true,
       &kListInstancesAsync},
      {"GET", "/v1/instances/{id}", kMember | kOperator | kAdmin, GetInstance, Body::kNone, "", false, /*inline_read=*/true,
       &kGetInstanceAsync},
      {"DELETE", "/v1/instances/{id}", kMember | kOperator | kAdmin, TerminateInstance},
      {"POST", "/v1/ssh-keys", kMember | kAdmin, CreateSshKey, Body::kRequired},
      {"GET", "/v1/ssh-keys", kMember | kAdmin, ListSshKeys},
      {"GET", "/v1/ssh-keys/{id}", kMember | kAdmin, GetSshKey},
      {"DELETE", "/v1/ssh-keys/{id}", kMember | kAdmin, DeleteSshKey},
      {"POST", "/v1/volumes", kMember | kAdmin, CreateVolume, Body::kRequired},
      {"GET", "/v1/volumes", kMember | kAdmin, ListVolumes},
      {"GET", "/v1/volumes/{id}", kMember | kAdmin, GetVolume},
      {"DELETE", "/v1/volumes/{id}", kMember | kAdmin, DeleteVolume},
      {"GET", "/v1/audit", kAdmin, ListAudit},
      {"GET", "/v1/hosts", kOperator | kAdmin, ListHosts},
      {"GET", "/v1/hosts/{id}", kOperator | kAdmin, GetHost},
      {"PATCH", "/v1/hosts/{id}", kOperator | kAdmin, UpdateHost, Body::kRequired},
      {"GET", "/v1/capacity", kOperator | kAdmin | kFinance, GetCapacity},
      {"PUT", "/v1/capacity/pools/{region}/{gpu_model}", kOperator | kAdmin, SetPoolCapacity, Body::kRequired},
      {"POST", "/v1/agent/register", kBootstrap, RegisterAgent, Body::kRequired},
      {.method = "POST", .pattern = "/v1/agent/heartbeat", .roles = kHost, .handler = AgentHeartbeat,
       .body = Body::kRequired, .fast_path = FastHeartbeat, .heard_when_refused = true},
      {"GET", "/v1/agent/assignments", kHost, AgentAssignments},
      {.method = "POST", .pattern = "/v1/agent/samples", .roles = kHost, .handler = IngestSamples,
       .body = Body::kRequired, .fast_path = FastIngest},
      {"GET", "/v1/usage", kMember | kAdmin | kFinance, GetUsage},
      {"GET", "/v1/fleet/usage", kOperator | kAdmin, GetFleetUsage},
      {"GET", "/v1/billing/prices", kFinance | kAdmin | kOperator, ListPrices},
      {"POST", "/v1/billing/prices", kFinance | kAdmin, SchedulePrice, Body::kRequired, "", /*idempotent=*/true},
      {"GET", "/v1/invoices", kMember | kFinance | kAdmin, ListMyInvoices},
      {"GET", "/v1/invoices/{id}", kMember | kFinance | kAdmin, GetInvoice},
      {"GET", "/v1/billing/invoices", kFinance | kAdmin, ListAllInvoices},
      {"GET", "/v1/billing/invoices.csv", kFinance | kAdmin, ExportInvoicesCsv},
      {"POST", "/v1/billing/invoices/{id}/credit-notes", kFinance | kAdmin, CreateCreditNote, Body::kRequired, "",
       /*idempotent=*/true},
      {"GET", "/v1/billing/periods", kFinance | kAdmin, ListClosedPeriods},
      {"GET", "/v1/billing/reports/revenue", kFinance | kOperator | kAdmin, GetRevenueReport},
      {"GET", "/v1/billing/exports/focus", kFinance | kAdmin, ExportFocusAll},
      {"GET", "/v1/billing/balance", kMember | kFinance | kAdmin, GetBalance},
      {"POST", "/v1/billing/tenants/{id}/credits", kFinance | kAdmin, AddCredit, Body::kRequired, "", /*idempotent=*/true},
      {"GET", "/v1/billing/tenants/{id}/credits", kFinance | kAdmin, ListCredits},
      {"PUT", "/v1/billing/tenants/{id}/mode", kFinance | kAdmin, SetPaymentMode, Body::kRequired, "", /*idempotent=*/true},
      {"PUT", "/v1/tenants/{id}/spend-limit", kMember | kFinance | kAdmin, SetSpendLimit, Body::kRequired, "id",
       /*idempotent=*/true},
      {"POST", "/v1/webhooks", kMember | kFinance | kAdmin, CreateWebhook, Body::kRequired, "", /*idempotent=*/true},
      {"GET", "/v1/webhooks", kMember | kFinance | kAdmin, ListWebhooks},
      {"DELETE", "/v1/webhooks/{id}", kMember | kFinance | kAdmin, DeleteWebhook},
      {"GET", "/v1/cost-export", kMember | kFinance | kAdmin, ExportFocusOwn},
      {"POST", "/v1/billing/periods/{period}/close", kFinance | kAdmin, ClosePeriodNow, Body::kOptional, "",
       /*idempotent=*/true},
      {"GET", "/v1/tenants/{id}/billing-profile", kAdmin | kFinance | kMember, GetBillingProfile, Body::kNone, "id"},
      {"PUT", "/v1/tenants/{id}/billing-profile", kAdmin | kFinance, SetBillingProfile, Body::kRequired, "id",
       /*idempotent=*/true},
  };
}

}  // namespace spillway
