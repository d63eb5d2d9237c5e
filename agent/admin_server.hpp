#pragma once
// The agent's own admin listener (`spillway-agent --admin-listen HOST:PORT`): GET /metrics
// (Prometheus text: spool size and unsent samples, samples dropped, batches shipped and quarantined,
// ship failures, sampler (NVML) errors, per host) and GET /healthz. One thread, one short request
// at a time: it is scraped, not browsed.
#include <functional>
#include <memory>
#include <string>

#include "core/config.hpp"

namespace spillway::agent {

class AdminServer {
 public:
  // Binds now; throws std::runtime_error naming the address when it cannot.
  AdminServer(const HostPort& listen, std::function<std::string()> metrics_text);
  ~AdminServer();
  void Start();
  void Stop();
  std::uint16_t port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spillway::agent
