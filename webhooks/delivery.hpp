#pragma once
// The webhook_deliveries step and its metrics (docs/architecture.md, "Webhooks"), run by the replica
// that leads the webhook loop (a lock and a thread of its own, beside the controllers'). Each endpoint
// is a queue of its own: every pass (each 250 ms) records the outcomes of the posts that finished and
// starts, for every endpoint with none in flight, its oldest due deliveries (at most 4 of one
// endpoint, 64 in all), each posted on a thread of its own under webhooks.timeout, signed. A receiver
// that hangs or fails holds up only its own deliveries. An outcome is recorded only after its
// answer: delivered on a 2xx; otherwise tried again with backoff, and given up after
// webhooks.max_attempts. A leader killed mid-delivery leaves it due: at least once, the same event id.
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/db_fwd.hpp"
#include "webhooks/webhooks.hpp"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
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
  ~Webhooks();  // waits for the posts in flight (each ends within webhooks.timeout)
  // The step's body (public for tests): records what finished, starts what is due; returns how many
  // deliveries it started.
  int Deliver(Session& conn, TimeMs now);

 private:
  struct Outcome {
    int status = 0;
    std::string error;
    TimeMs answered_at{};
  };
  struct InFlight {
    webhooks::Due due;
    std::future<Outcome> outcome;
  };
  Outcome Post(const webhooks::Due& d, TimeMs now) const;
  // Takes the finished posts out of flight and records them in one transaction; how many.
  int Record(Session& conn, TimeMs now);

  webhooks::Settings settings_;
  const SecretBox* secrets_;
  prometheus::Family<prometheus::Counter>* deliveries_;
  prometheus::Gauge* backlog_;
  prometheus::Histogram* delay_;
  std::multimap<std::string, InFlight> in_flight_;  // by endpoint id; only the step's thread touches it
  int passes_ = 0;
};

// The context a webhook secret is sealed under (secrets.key_file).
inline constexpr const char* kWebhookSecretContext = "webhook_endpoints.secret_sealed";

}  // namespace spillway
