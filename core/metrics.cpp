#include "core/metrics.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sstream>

#include "core/long_lived.hpp"

namespace spillway {
namespace {

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) m.counter.value = value;
  else m.gauge.value = value;
  f.metric.push_back(m);
  return f;
}

// The standard process_* metrics, read from /proc at scrape time.
std::vector<prometheus::MetricFamily> ProcessMetrics() {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  std::ifstream stat("/proc/self/stat");
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = content.rfind(')');
  if (close != std::string::npos) {
    std::istringstream rest(content.substr(close + 2));
    std::vector<std::string> f;
    for (std::string tok; rest >> tok;) f.push_back(tok);
    // Fields after the command: state(3) ... utime(14) stime(15) ... starttime(22) vsize(23) rss(24).
    auto field = [&](int n) { return std::stod(f.at(static_cast<size_t>(n - 3))); };
    if (f.size() > 21) {
      out.push_back(Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                           MetricType::Counter, (field(14) + field(15)) / ticks));
      out.push_back(Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
                           field(23)));
      out.push_back(Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
                           field(24) * page));
      std::ifstream uptime_stat("/proc/stat");
      double btime = 0;
      for (std::string key; uptime_stat >> key;) {
        if (key == "btime") {
          uptime_stat >> btime;
          break;
        }
      }
      out.push_back(Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                           MetricType::Gauge, btime + field(22) / ticks));
    }
  }
  double fds = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d)) ++fds;
    closedir(d);
    fds -= 3;  // ".", ".." and the directory's own descriptor
  }
  out.push_back(Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, fds));
  out.push_back(Family("spillway_long_lived_memory_bytes",
                       "Bytes of per-host caches and per-descriptor records, kept apart from the common heap "
                       "(core/long_lived.hpp)",
                       MetricType::Gauge, static_cast<double>(LongLivedMemoryInUse())));
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    out.push_back(Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
                         static_cast<double>(rl.rlim_cur)));
  return out;
}

}  // namespace

LabeledGauge::LabeledGauge(std::string name, std::string help, std::string label)
    : name_(std::move(name)), help_(std::move(help)), label_(std::move(label)), series_(&LongLivedMemory()) {}

void LabeledGauge::Set(std::string_view label_value, double value) {
  std::lock_guard lk(mu_);
  PutKept(series_, label_value, value);
}

void LabeledGauge::Remove(std::string_view label_value) {
  std::lock_guard lk(mu_);
  EraseKept(series_, label_value);
}

size_t LabeledGauge::Size() const {
  std::lock_guard lk(mu_);
  return series_.size();
}

prometheus::MetricFamily LabeledGauge::Collect() const {
  prometheus::MetricFamily f;
  f.name = name_;
  f.help = help_;
  f.type = prometheus::MetricType::Gauge;
  std::lock_guard lk(mu_);
  f.metric.reserve(series_.size());
  for (const auto& [value_of_label, value] : series_) {
    prometheus::ClientMetric m;
    m.label.push_back({label_, std::string(value_of_label)});
    m.gauge.value = value;
    f.metric.push_back(std::move(m));
  }
  return f;
}

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::BuildGauge()
      .Name("spillway_build_info")
      .Help("Spillway build; the value is always 1")
      .Register(*registry_)
      .Add({{"version", SPILLWAY_VERSION}})
      .Set(1);
}

Metrics::~Metrics() = default;

void Metrics::Add(std::weak_ptr<const LabeledGauge> gauge) {
  std::lock_guard lk(mu_);
  labeled_.push_back(std::move(gauge));
}

std::string Metrics::Render() const {
  auto families = registry_->Collect();
  {
    std::lock_guard lk(mu_);
    for (const auto& weak : labeled_)
      if (const auto gauge = weak.lock()) families.push_back(gauge->Collect());
  }
  for (auto& f : ProcessMetrics()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace spillway
