#pragma once
#include <memory>
#include <string>

namespace prometheus {
class Registry;
}

namespace spillway {

// The process's metric registry, plus process_* and spillway_build_info, rendered in the
// Prometheus text format for the admin listener's /metrics.
class Metrics {
 public:
  Metrics();
  ~Metrics();
  prometheus::Registry& registry() { return *registry_; }
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
};

}  // namespace spillway
