#pragma once
#include <map>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace prometheus {
class Registry;
struct MetricFamily;
}  // namespace prometheus

namespace spillway {

// A gauge with one series per value of one label, for label values as many as the fleet's hosts
// (spillway_host_clock_skew_seconds{host_id}). Its series are kept in LongLivedMemory
// (core/long_lived.hpp), like every per-host cache; a prometheus::Family would make four blocks per
// series in the common heap. Rendered by Metrics at scrape time once added to it.
class LabeledGauge {
 public:
  LabeledGauge(std::string name, std::string help, std::string label);
  void Set(std::string_view label_value, double value);
  void Remove(std::string_view label_value);
  size_t Size() const;
  prometheus::MetricFamily Collect() const;

 private:
  const std::string name_, help_, label_;
  mutable std::mutex mu_;
  std::pmr::map<std::pmr::string, double, std::less<>> series_;
};

// The process's metric registry, plus process_* and spillway_build_info, rendered in the
// Prometheus text format for the admin listener's /metrics.
class Metrics {
 public:
  Metrics();
  ~Metrics();
  prometheus::Registry& registry() { return *registry_; }
  // Rendered with the registry's metrics for as long as it lives.
  void Add(std::weak_ptr<const LabeledGauge> gauge);
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  mutable std::mutex mu_;
  std::vector<std::weak_ptr<const LabeledGauge>> labeled_;
};

}  // namespace spillway
