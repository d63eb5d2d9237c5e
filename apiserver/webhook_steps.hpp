#pragma once
// The webhook_deliveries step and its metrics (docs/architecture.md, "Webhooks"), run by the replica
// that leads the webhook loop (a lock and a thread of its own, beside the controllers'): each
// second it takes the deliveries that are due (at most 16), posts them at once, each under
// webhooks.timeout, signed, and records each outcome: delivered on a 2xx; otherwise tried again
// with backoff, and given up after webhooks.max_attempts. A delivery is marked only after its
// answer, so a leader killed mid-delivery leaves it due: at least once, the same event id.
#include <string>

#include "core/db_fwd.hpp"
#include "webhooks/webhooks.hpp"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
template <typename T>
class Family;
}  // namespace prometheus

namespace spillway {
class PeriodicSteps;
class SecretBox;

class Webhooks {
 public:
  Webhooks(webhooks::Settings settings, const SecretBox* secrets, prometheus::Registry& registry);
  const webhooks::Settings& settings() const { return settings_; }
  void Register(PeriodicSteps& steps);
  // The step's body (public for tests): delivers what is due; returns how many it tried.
  int Deliver(Session& conn, TimeMs now);

 private:
  webhooks::Settings settings_;
  const SecretBox* secrets_;
  prometheus::Family<prometheus::Counter>* deliveries_;
  prometheus::Gauge* backlog_;
};

// The context a webhook secret is sealed under (secrets.key_file).
inline constexpr const char* kWebhookSecretContext = "webhook_endpoints.secret_sealed";

}  // namespace spillway
