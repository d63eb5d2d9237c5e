#include "apiserver/settings.hpp"

#include <stdexcept>

namespace spillway {
namespace {

http::ListenerOptions Listener(const Config& c, const std::string& name, const std::string& listen_key) {
  http::ListenerOptions o;
  o.name = name;
  const auto listen = ParseHostPort(c.String(listen_key));
  if (!listen) throw std::invalid_argument(listen_key + ": not HOST:PORT: " + c.String(listen_key));
  o.listen = *listen;
  o.max_body_bytes = static_cast<size_t>(c.Int("server.max_body_bytes"));
  o.header_timeout = c.Duration("server.header_timeout");
  o.body_timeout = c.Duration("server.body_timeout");
  o.idle_timeout = c.Duration("server.idle_timeout");
  return o;
}

}  // namespace

ServerSettings ServerSettings::From(const Config& c) {
  ServerSettings s;
  s.api = Listener(c, "api", "server.listen");
  s.admin = Listener(c, "admin", "server.admin_listen");
  if (c.Bool("tls.enabled")) {
    auto o = Listener(c, "api-tls", "tls.listen");
    o.tls = true;
    o.cert_file = c.String("tls.cert_file");
    o.key_file = c.String("tls.key_file");
    if (o.cert_file.empty() || o.key_file.empty())
      throw std::invalid_argument("tls.enabled needs tls.cert_file and tls.key_file");
    s.api_tls = std::move(o);
  }
  const auto io_threads = c.Int("server.io_threads");
  if (io_threads < 1 || io_threads > 256) throw std::invalid_argument("server.io_threads: must be 1 to 256");
  s.io_threads = static_cast<int>(io_threads);
  s.shutdown_timeout = c.Duration("server.shutdown_timeout");
  s.key_cache_ttl = c.Duration("auth.key_cache_ttl");
  s.idempotency_ttl = c.Duration("idempotency.ttl");
  if (s.idempotency_ttl.count() <= 0) throw std::invalid_argument("idempotency.ttl: must be positive");
  s.rate_limits = RateLimitSettings::From(c);
  if (c.Duration("console.session_ttl").count() < 60'000)
    throw std::invalid_argument("console.session_ttl: must be at least 1m");
  s.bootstrap_token = c.String("agent.bootstrap_token");
  s.operator_tenant_name = c.String("operator.tenant_name");
  s.controllers_tick = c.Duration("controllers.tick");
  if (s.controllers_tick.count() <= 0) throw std::invalid_argument("controllers.tick: must be positive");
  return s;
}

}  // namespace spillway
