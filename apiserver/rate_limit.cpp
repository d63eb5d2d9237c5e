#include "apiserver/rate_limit.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <cmath>
#include <stdexcept>

#include "core/config.hpp"

namespace spillway {
namespace {
constexpr size_t kPruneAbove = 10'000;  // buckets kept before full (idle) ones are let go
}

RateLimitSettings RateLimitSettings::From(const Config& c) {
  RateLimitSettings s;
  if (!c.Bool("ratelimit.enabled")) return s;
  s.key_rate = c.Int("ratelimit.key_rate");
  s.key_burst = c.Int("ratelimit.key_burst");
  s.tenant_rate = c.Int("ratelimit.tenant_rate");
  s.tenant_burst = c.Int("ratelimit.tenant_burst");
  if (s.key_rate > 0 && s.key_burst < 1) throw std::invalid_argument("ratelimit.key_burst: must be at least 1");
  if (s.tenant_rate > 0 && s.tenant_burst < 1) throw std::invalid_argument("ratelimit.tenant_burst: must be at least 1");
  return s;
}

RateLimiter::RateLimiter(RateLimitSettings settings, prometheus::Registry* registry) : settings_(settings) {
  if (!registry) return;
  auto& limited = prometheus::BuildCounter()
                      .Name("spillway_rate_limited_total")
                      .Help("Requests refused 429 by a rate limit, by the bucket that was empty (key or tenant)")
                      .Register(*registry);
  limited_key_ = &limited.Add({{"scope", "key"}});
  limited_tenant_ = &limited.Add({{"scope", "tenant"}});
  buckets_ = &prometheus::BuildGauge()
                  .Name("spillway_rate_limit_buckets")
                  .Help("Rate-limit buckets (API keys and tenants) this replica holds")
                  .Register(*registry)
                  .Add({});
}

double RateLimiter::Refilled(const Bucket& b, double rate, double burst, Clock::time_point now) {
  const double seconds = std::chrono::duration<double>(now - b.at).count();
  return std::min(burst, b.tokens + std::max(0.0, seconds) * rate);
}

void RateLimiter::Prune(std::unordered_map<std::string, Bucket>& buckets, double rate, double burst,
                        Clock::time_point now) {
  if (buckets.size() <= kPruneAbove) return;
  // A full bucket is the same as none: let it go.
  std::erase_if(buckets, [&](const auto& kv) { return Refilled(kv.second, rate, burst, now) >= burst; });
}

std::optional<RateLimiter::Refusal> RateLimiter::Take(const std::string& key_id, const std::string& tenant_id,
                                                      Clock::time_point now) {
  const double krate = static_cast<double>(settings_.key_rate), kburst = static_cast<double>(settings_.key_burst);
  const double trate = static_cast<double>(settings_.tenant_rate), tburst = static_cast<double>(settings_.tenant_burst);
  std::lock_guard lk(mu_);
  Bucket* key = nullptr;
  Bucket* tenant = nullptr;
  if (settings_.key_rate > 0) {
    auto [it, added] = keys_.try_emplace(key_id, Bucket{kburst, now});
    key = &it->second;
    key->tokens = Refilled(*key, krate, kburst, now);
    key->at = now;
  }
  if (settings_.tenant_rate > 0) {
    auto [it, added] = tenants_.try_emplace(tenant_id, Bucket{tburst, now});
    tenant = &it->second;
    tenant->tokens = Refilled(*tenant, trate, tburst, now);
    tenant->at = now;
  }
  std::optional<Refusal> refusal;
  const auto refuse = [&](const char* scope, double tokens, std::int64_t rate, std::int64_t burst) {
    const double wait = (1.0 - tokens) / static_cast<double>(rate);
    refusal = Refusal{scope, rate, burst, std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(wait)))};
  };
  if (key && key->tokens < 1.0) refuse("key", key->tokens, settings_.key_rate, settings_.key_burst);
  else if (tenant && tenant->tokens < 1.0) refuse("tenant", tenant->tokens, settings_.tenant_rate, settings_.tenant_burst);
  if (!refusal) {
    if (key) key->tokens -= 1.0;
    if (tenant) tenant->tokens -= 1.0;
  } else if (refusal->scope == "key") {
    if (limited_key_) limited_key_->Increment();
  } else if (limited_tenant_) {
    limited_tenant_->Increment();
  }
  // Past kPruneAbove buckets, full ones are let go; at most once a second, so many busy keys (none
  // full) do not make every request scan them all.
  if (keys_.size() + tenants_.size() > kPruneAbove && now - pruned_ >= std::chrono::seconds(1)) {
    pruned_ = now;
    Prune(keys_, krate, kburst, now);
    Prune(tenants_, trate, tburst, now);
  }
  if (buckets_) buckets_->Set(static_cast<double>(keys_.size() + tenants_.size()));
  return refusal;
}

}  // namespace spillway
