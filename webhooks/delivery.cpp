#include "webhooks/delivery.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "apiserver/http/client.hpp"
#include "core/db.hpp"
#include "core/log.hpp"
#include "core/periodic.hpp"
#include "core/secrets.hpp"

namespace spillway {
using namespace prometheus;

namespace {
constexpr int kMaxInFlight = 64;   // posts at once, over every endpoint
constexpr int kPerEndpoint = 4;    // of one endpoint at once
constexpr int kBacklogEvery = 20;  // passes between backlog counts when nothing was recorded (5 s)
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
  delay_ = &BuildHistogram()
                .Name("spillway_webhook_delivery_delay_seconds")
                .Help("From an event's creation to the 2xx that delivered it to one endpoint (each endpoint is a "
                      "queue of its own: one that hangs or fails delays only its own)")
                .Register(registry)
                .Add({}, Histogram::BucketBoundaries{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600});
}

Webhooks::~Webhooks() {
  for (auto& [endpoint, f] : in_flight_)
    if (f.outcome.valid()) f.outcome.wait();
}

void Webhooks::Register(PeriodicSteps& steps) {
  steps.Add({"webhook_deliveries", std::chrono::milliseconds(250),
             [this](pqxx::connection& c, const StepContext& s) { Deliver(c, s.now); }});
}

Webhooks::Outcome Webhooks::Post(const webhooks::Due& d, TimeMs now) const {
  const auto answered = [&](int status, std::string error) { return Outcome{status, std::move(error), now}; };
  std::string error;
  const auto target = webhooks::ParseTarget(d.url, settings_, &error);
  if (!target) return answered(0, error);
  if (!secrets_) return answered(0, "no secrets key file to open the endpoint's secret with");
  std::string secret;
  try {
    secret = secrets_->Open(d.secret_sealed, kWebhookSecretContext);
  } catch (const std::exception& e) {
    return answered(0, std::string("the endpoint's secret does not open: ") + e.what());
  }
  const std::int64_t t = EpochMs(now) / 1000;
  http::OutboundRequest r{target->scheme, target->host, target->port, target->target, {}, d.body};
  r.headers = {{"Spillway-Event-Id", d.event_id},
               {"Spillway-Event-Type", d.type},
               {"Spillway-Timestamp", std::to_string(t)},
               {"Spillway-Signature", webhooks::Signature(secret, t, d.body)}};
  const auto started = std::chrono::steady_clock::now();
  const http::OutboundResult result = http::Post(r, settings_.timeout, settings_.ca_file);
  return {result.status, result.error,
          now + std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - started)};
}

int Webhooks::Record(Session& conn, TimeMs now) {
  // An endpoint leaves flight when every post of it has its answer.
  std::vector<std::pair<webhooks::Due, Outcome>> done;
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    const auto range = in_flight_.equal_range(it->first);
    bool all = true;
    for (auto j = range.first; j != range.second; ++j)
      all = all && j->second.outcome.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
    if (all) {
      for (auto j = range.first; j != range.second; ++j) done.emplace_back(j->second.due, j->second.outcome.get());
      it = in_flight_.erase(range.first, range.second);
    } else {
      it = range.second;
    }
  }
  if (done.empty()) return 0;
  InTransaction(conn, [&](Tx& tx) {
    for (const auto& [d, r] : done) {
      const bool ok = r.status >= 200 && r.status < 300;
      const std::string error = ok ? "" : !r.error.empty() ? r.error : "answered " + std::to_string(r.status);
      webhooks::RecordAttempt(tx, d, ok, r.status, error, now, settings_);
      const bool given_up = !ok && d.attempts + 1 >= settings_.max_attempts;
      deliveries_->Add({{"result", ok ? "delivered" : given_up ? "given_up" : "failed"}}).Increment();
      if (ok) delay_->Observe(std::max(0.0, std::chrono::duration<double>(r.answered_at - d.event_created_at).count()));
      else
        log::Warn("webhook delivery failed", {{"event", d.event_id}, {"endpoint", d.endpoint_id},
                                              {"attempt", d.attempts + 1}, {"error", error}});
    }
    backlog_->Set(static_cast<double>(webhooks::Backlog(tx)));
  });
  return static_cast<int>(done.size());
}

int Webhooks::Deliver(Session& conn, TimeMs now) {
  const bool recorded = Record(conn, now) > 0;
  std::vector<std::string> busy;
  for (auto it = in_flight_.begin(); it != in_flight_.end(); it = in_flight_.upper_bound(it->first))
    busy.push_back(it->first);
  const int room = kMaxInFlight - static_cast<int>(in_flight_.size());
  std::vector<webhooks::Due> due;
  if (room > 0)
    due = InTransaction(conn, [&](Tx& tx) {
      if (!recorded && ++passes_ % kBacklogEvery == 0) backlog_->Set(static_cast<double>(webhooks::Backlog(tx)));
      return webhooks::DueDeliveries(tx, now, room, kPerEndpoint, busy);
    });
  for (auto& d : due) {
    std::string endpoint = d.endpoint_id;
    auto outcome = std::async(std::launch::async, [this, d, now] { return Post(d, now); });
    in_flight_.emplace(std::move(endpoint), InFlight{std::move(d), std::move(outcome)});
  }
  return static_cast<int>(due.size());
}

}  // namespace spillway
