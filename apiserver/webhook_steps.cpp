#include "apiserver/webhook_steps.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>

#include <future>
#include <vector>

#include "apiserver/http/client.hpp"
#include "core/db.hpp"
#include "core/log.hpp"
#include "core/periodic.hpp"
#include "core/secrets.hpp"

namespace spillway {
using namespace prometheus;

namespace {
constexpr int kBatch = 16;
}  // namespace

Webhooks::Webhooks(webhooks::Settings settings, const SecretBox* secrets, Registry& registry)
    : settings_(std::move(settings)), secrets_(secrets) {
  deliveries_ = &BuildCounter()
                     .Name("spillway_webhook_deliveries_total")
                     .Help("Webhook delivery attempts by result: delivered (a 2xx), failed (tried again later), "
                           "given_up (the last of webhooks.max_attempts failed)")
                     .Register(registry);
  for (const char* r : {"delivered", "failed", "given_up"}) deliveries_->Add({{"result", r}});
  backlog_ = &BuildGauge()
                  .Name("spillway_webhook_backlog")
                  .Help("Webhook deliveries neither delivered nor given up (set by the leader)")
                  .Register(registry)
                  .Add({});
}

void Webhooks::Register(PeriodicSteps& steps) {
  steps.Add({"webhook_deliveries", std::chrono::seconds(1),
             [this](pqxx::connection& c, const StepContext& s) { Deliver(c, s.now); }});
}

int Webhooks::Deliver(Session& conn, TimeMs now) {
  const auto due = InTransaction(conn, [&](Tx& tx) { return webhooks::DueDeliveries(tx, now, kBatch); });
  std::vector<std::future<http::OutboundResult>> sent;
  for (const auto& d : due) {
    sent.push_back(std::async(std::launch::async, [this, &d, now]() -> http::OutboundResult {
      std::string error;
      const auto target = webhooks::ParseTarget(d.url, settings_, &error);
      if (!target) return {0, error};
      if (!secrets_) return {0, "no secrets key file to open the endpoint's secret with"};
      std::string secret;
      try {
        secret = secrets_->Open(d.secret_sealed, kWebhookSecretContext);
      } catch (const std::exception& e) {
        return {0, std::string("the endpoint's secret does not open: ") + e.what()};
      }
      const std::int64_t t = EpochMs(now) / 1000;
      http::OutboundRequest r{target->scheme, target->host, target->port, target->target, {}, d.body};
      r.headers = {{"Spillway-Event-Id", d.event_id},
                   {"Spillway-Event-Type", d.type},
                   {"Spillway-Timestamp", std::to_string(t)},
                   {"Spillway-Signature", webhooks::Signature(secret, t, d.body)}};
      return http::Post(r, settings_.timeout, settings_.ca_file);
    }));
  }
  std::vector<http::OutboundResult> results;
  for (auto& f : sent) results.push_back(f.get());
  InTransaction(conn, [&](Tx& tx) {
    for (std::size_t i = 0; i < due.size(); ++i) {
      const auto& d = due[i];
      const auto& r = results[i];
      const bool ok = r.status >= 200 && r.status < 300;
      const std::string error = ok ? "" : !r.error.empty() ? r.error : "answered " + std::to_string(r.status);
      webhooks::RecordAttempt(tx, d, ok, r.status, error, now, settings_);
      const bool given_up = !ok && d.attempts + 1 >= settings_.max_attempts;
      deliveries_->Add({{"result", ok ? "delivered" : given_up ? "given_up" : "failed"}}).Increment();
      if (!ok)
        log::Warn("webhook delivery failed", {{"event", d.event_id}, {"endpoint", d.endpoint_id},
                                              {"attempt", d.attempts + 1}, {"error", error}});
    }
    backlog_->Set(static_cast<double>(webhooks::Backlog(tx)));
  });
  return static_cast<int>(due.size());
}

}  // namespace spillway
