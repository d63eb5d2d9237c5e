#pragma once
// Rate limits (OWASP API4, unrestricted resource consumption): a token bucket per API key and one per
// tenant, so one script cannot take every worker from the other tenants. Agents (host tokens), the
// bootstrap token and unauthenticated routes (the document, the console's files, sign-in) are not
// limited, nor is the admin listener (health checks, /metrics). Buckets live in each replica's
// memory: with N replicas behind a balancer a key gets up to N times the rate, which is what
// per-replica limits mean (docs/runbooks.md).
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
}  // namespace prometheus

namespace spillway {

class Config;

struct RateLimitSettings {
  // Requests a second each bucket refills by, and how many it holds (a burst); 0 turns that
  // bucket off.
  std::int64_t key_rate = 0, key_burst = 0, tenant_rate = 0, tenant_burst = 0;
  // Throws std::invalid_argument naming the key that is wrong.
  static RateLimitSettings From(const Config& config);
  bool Any() const { return key_rate > 0 || tenant_rate > 0; }
};

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  RateLimiter(RateLimitSettings settings, prometheus::Registry* registry = nullptr);

  struct Refusal {
    std::string scope;        // "key" or "tenant"
    std::int64_t rate = 0, burst = 0;
    std::int64_t retry_after_s = 1;  // until the bucket holds a token again, rounded up
  };
  // One request of key_id (of tenant_id): takes a token from both buckets, or from neither and
  // says which one is empty.
  std::optional<Refusal> Take(const std::string& key_id, const std::string& tenant_id, Clock::time_point now = Clock::now());

 private:
  struct Bucket {
    double tokens;
    Clock::time_point at;
  };
  static double Refilled(const Bucket& b, double rate, double burst, Clock::time_point now);
  static void Prune(std::unordered_map<std::string, Bucket>& buckets, double rate, double burst, Clock::time_point now);

  const RateLimitSettings settings_;
  std::mutex mu_;
  std::unordered_map<std::string, Bucket> keys_, tenants_;
  Clock::time_point pruned_{};  // when full buckets were last let go (at most once a second)
  prometheus::Counter* limited_key_ = nullptr;
  prometheus::Counter* limited_tenant_ = nullptr;
  prometheus::Gauge* buckets_ = nullptr;
};

}  // namespace spillway
