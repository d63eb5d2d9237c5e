#pragma once
// What the agent reads off each GPU every sample interval, behind one interface:
//   nvml       libnvidia-ml.so.1 loaded with dlopen at run time (no NVIDIA package at build time)
//   simulated  values in NVML's units and ranges (docs/protocol.md), deterministic from a seed,
//              busy while an instance runs on the GPU and idle otherwise
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "protocol/agent.hpp"

namespace spillway::agent {

struct GpuReading {
  int index = 0;
  int util_pct = 0;
  std::int64_t mem_used_bytes = 0;
  std::int64_t power_mw = 0;
  std::optional<std::int64_t> energy_total_mj;  // the GPU's own monotonic energy counter, when it has one
};

// A call to the GPU library failed; the message names the call and the library's reason.
struct SamplerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Sampler {
 public:
  virtual ~Sampler() = default;
  // One reading per GPU; throws SamplerError.
  virtual std::vector<GpuReading> Read(TimeMs now) = 0;
};
using SamplerPtr = std::unique_ptr<Sampler>;

// Simulated GPUs of `memory_bytes` each. busy(index) says whether an instance runs on the GPU now.
class SimulatedSampler : public Sampler {
 public:
  SimulatedSampler(std::uint64_t seed, std::vector<protocol::Gpu> gpus, std::function<bool(int)> busy);
  std::vector<GpuReading> Read(TimeMs now) override;

 private:
  std::uint64_t seed_;
  std::vector<protocol::Gpu> gpus_;
  std::function<bool(int)> busy_;
  std::vector<std::int64_t> energy_mj_;
  std::optional<TimeMs> last_;
  std::uint64_t tick_ = 0;
};

struct NvmlHost {
  std::vector<protocol::Gpu> gpus;  // model as the catalog names it: see NvmlSampler::ModelName
  std::string driver_version;
  std::string cuda_version;  // "12.8"
};

class NvmlSampler : public Sampler {
 public:
  // Loads `library` (default libnvidia-ml.so.1) and initialises NVML. nullptr with *why
  // ("nvml unavailable: ...") when there is no library, a symbol is missing, or init fails.
  static std::unique_ptr<NvmlSampler> Open(const std::string& library, std::string* why);
  ~NvmlSampler() override;
  NvmlHost Discover();  // throws SamplerError
  std::vector<GpuReading> Read(TimeMs now) override;
  // "NVIDIA H100 80GB HBM3" with 80 GiB -> "H100-80GB"; "NVIDIA H200" with 140.4 GiB -> "H200-141GB"
  // (the part after "NVIDIA " up to a space or dash, and the memory in GiB rounded up).
  // `spillway-agent --gpu-model` overrides it where the catalog names a model otherwise.
  static std::string ModelName(const std::string& nvml_name, std::int64_t memory_bytes);

 private:
  struct Api;
  explicit NvmlSampler(std::unique_ptr<Api> api);
  std::unique_ptr<Api> api_;
};

}  // namespace spillway::agent
