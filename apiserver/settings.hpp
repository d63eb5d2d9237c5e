#pragma once
// The apiserver's own configuration sections ([server], [tls], [auth], [idempotency], [agent],
// [operator], [controllers], [ratelimit]) read and checked once at start into one struct, like the
// fleet's (FleetSettings) and the database's (DbOptions). Nothing below reads configuration by key.
#include <optional>
#include <string>

#include "apiserver/http/server.hpp"
#include "apiserver/rate_limit.hpp"
#include "core/config.hpp"
#include "core/duration.hpp"

namespace spillway {

struct ServerSettings {
  http::ListenerOptions api, admin;
  std::optional<http::ListenerOptions> api_tls;  // when tls.enabled
  int io_threads = 2;
  Millis shutdown_timeout{10000};
  Millis key_cache_ttl{5000};    // auth: 0 turns the cache off
  Millis idempotency_ttl{24 * 3600 * 1000};
  std::string bootstrap_token;   // agent.bootstrap_token
  std::string operator_tenant_name;
  Millis controllers_tick{1000};
  RateLimitSettings rate_limits;  // [ratelimit]; none set: off

  // Throws std::invalid_argument naming the key that is wrong ("tls.cert_file: ...").
  static ServerSettings From(const Config& config);
};

}  // namespace spillway
