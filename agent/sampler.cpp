#include "agent/sampler.hpp"

#include <dlfcn.h>

#include <cmath>

namespace spillway::agent {
namespace {

std::uint64_t Mix(std::uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// A number in [lo, hi] from (seed, gpu, tick, salt): the same inputs give the same value.
std::int64_t Draw(std::uint64_t seed, int gpu, std::uint64_t tick, int salt, std::int64_t lo, std::int64_t hi) {
  const std::uint64_t r = Mix(seed ^ Mix(static_cast<std::uint64_t>(gpu) * 1000003ull + tick * 7919ull +
                                         static_cast<std::uint64_t>(salt)));
  return lo + static_cast<std::int64_t>(r % static_cast<std::uint64_t>(hi - lo + 1));
}

}  // namespace

SimulatedSampler::SimulatedSampler(std::uint64_t seed, std::vector<protocol::Gpu> gpus, std::function<bool(int)> busy)
    : seed_(seed), gpus_(std::move(gpus)), busy_(std::move(busy)), energy_mj_(gpus_.size(), 0) {
  // Counters that started long before this process, as a GPU's do.
  for (std::size_t i = 0; i < gpus_.size(); ++i)
    energy_mj_[i] = Draw(seed_, static_cast<int>(gpus_[i].index), 0, 99, 1'000'000'000LL, 9'000'000'000LL);
}

std::vector<GpuReading> SimulatedSampler::Read(TimeMs now) {
  // The ranges NVML shows on an H200 (docs/protocol.md): idle 0 %, 80-130 W, ~0.6 GB used; busy
  // 90-100 %, 640-700 W, most of the memory.
  const double dt_s = last_ ? std::chrono::duration<double>(now - *last_).count() : 0.0;
  last_ = now;
  ++tick_;
  std::vector<GpuReading> out;
  for (std::size_t i = 0; i < gpus_.size(); ++i) {
    const int g = static_cast<int>(gpus_[i].index);
    const bool busy = busy_ && busy_(g);
    GpuReading r;
    r.index = g;
    const std::int64_t mem = gpus_[i].memory_bytes > 0 ? gpus_[i].memory_bytes : 80LL << 30;
    if (busy) {
      r.util_pct = static_cast<int>(Draw(seed_, g, tick_, 1, 90, 100));
      r.power_mw = Draw(seed_, g, tick_, 2, 640'000, 700'000);
      r.mem_used_bytes = mem / 100 * Draw(seed_, g, tick_, 3, 60, 95);
    } else {
      r.util_pct = 0;
      r.power_mw = Draw(seed_, g, tick_, 2, 80'000, 130'000);
      r.mem_used_bytes = Draw(seed_, g, tick_, 3, 600, 700) * 1'000'000LL;
    }
    energy_mj_[i] += static_cast<std::int64_t>(static_cast<double>(r.power_mw) * dt_s);  // mW x s = mJ
    r.energy_total_mj = energy_mj_[i];
    out.push_back(r);
  }
  return out;
}

// ---- NVML, resolved at run time -------------------------------------------------------------

namespace {
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
struct nvmlMemory_t {
  unsigned long long total, free, used;
};
struct nvmlUtilization_t {
  unsigned int gpu, memory;
};
constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr nvmlReturn_t kNvmlNotSupported = 3;
}  // namespace

struct NvmlSampler::Api {
  void* lib = nullptr;
  nvmlReturn_t (*Init)() = nullptr;
  nvmlReturn_t (*Shutdown)() = nullptr;
  const char* (*ErrorString)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*GetCount)(unsigned int*) = nullptr;
  nvmlReturn_t (*GetHandle)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*GetUuid)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*GetName)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*GetMemory)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  nvmlReturn_t (*GetUtilization)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*GetPower)(nvmlDevice_t, unsigned int*) = nullptr;
  nvmlReturn_t (*GetEnergy)(nvmlDevice_t, unsigned long long*) = nullptr;
  nvmlReturn_t (*DriverVersion)(char*, unsigned int) = nullptr;
  nvmlReturn_t (*CudaVersion)(int*) = nullptr;  // optional: older drivers lack it
  std::vector<nvmlDevice_t> devices;

  void Check(nvmlReturn_t rc, const char* call) const {
    if (rc != kNvmlSuccess)
      throw SamplerError(std::string(call) + ": " + (ErrorString ? ErrorString(rc) : "error " + std::to_string(rc)));
  }
};

std::unique_ptr<NvmlSampler> NvmlSampler::Open(const std::string& library, std::string* why) {
  auto api = std::make_unique<Api>();
  const std::string path = library.empty() ? "libnvidia-ml.so.1" : library;
  api->lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!api->lib) {
    const char* e = ::dlerror();
    *why = "nvml unavailable: " + std::string(e ? e : "cannot load " + path);
    return nullptr;
  }
  bool missing = false;
  auto bind = [&](auto& fn, const char* name, bool required = true) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(api->lib, name));
    if (!fn && required && !missing) {
      missing = true;
      *why = "nvml unavailable: " + path + " has no " + name;
    }
  };
  bind(api->Init, "nvmlInit_v2");
  bind(api->Shutdown, "nvmlShutdown");
  bind(api->ErrorString, "nvmlErrorString");
  bind(api->GetCount, "nvmlDeviceGetCount_v2");
  bind(api->GetHandle, "nvmlDeviceGetHandleByIndex_v2");
  bind(api->GetUuid, "nvmlDeviceGetUUID");
  bind(api->GetName, "nvmlDeviceGetName");
  bind(api->GetMemory, "nvmlDeviceGetMemoryInfo");
  bind(api->GetUtilization, "nvmlDeviceGetUtilizationRates");
  bind(api->GetPower, "nvmlDeviceGetPowerUsage");
  bind(api->GetEnergy, "nvmlDeviceGetTotalEnergyConsumption");
  bind(api->DriverVersion, "nvmlSystemGetDriverVersion");
  bind(api->CudaVersion, "nvmlSystemGetCudaDriverVersion", false);
  if (missing) {
    ::dlclose(api->lib);
    return nullptr;
  }
  if (const nvmlReturn_t rc = api->Init(); rc != kNvmlSuccess) {
    *why = "nvml unavailable: nvmlInit_v2: " + std::string(api->ErrorString(rc));
    ::dlclose(api->lib);
    return nullptr;
  }
  try {
    unsigned int count = 0;
    api->Check(api->GetCount(&count), "nvmlDeviceGetCount_v2");
    if (count == 0) throw SamplerError("nvmlDeviceGetCount_v2: no GPUs");
    for (unsigned int i = 0; i < count; ++i) {
      nvmlDevice_t d = nullptr;
      api->Check(api->GetHandle(i, &d), "nvmlDeviceGetHandleByIndex_v2");
      api->devices.push_back(d);
    }
  } catch (const SamplerError& e) {
    *why = "nvml unavailable: " + std::string(e.what());
    api->Shutdown();
    ::dlclose(api->lib);
    return nullptr;
  }
  return std::unique_ptr<NvmlSampler>(new NvmlSampler(std::move(api)));
}

NvmlSampler::NvmlSampler(std::unique_ptr<Api> api) : api_(std::move(api)) {}

NvmlSampler::~NvmlSampler() {
  if (api_ && api_->lib) {
    api_->Shutdown();
    ::dlclose(api_->lib);
  }
}

std::string NvmlSampler::ModelName(const std::string& nvml_name, std::int64_t memory_bytes) {
  std::string name = nvml_name;
  if (name.rfind("NVIDIA ", 0) == 0) name = name.substr(7);
  name = name.substr(0, name.find_first_of(" -"));  // "A100-SXM4-80GB" -> "A100"
  const auto gib = static_cast<std::int64_t>(std::ceil(static_cast<double>(memory_bytes) / (1LL << 30) - 1e-9));
  return name + "-" + std::to_string(gib) + "GB";
}

NvmlHost NvmlSampler::Discover() {
  NvmlHost host;
  char buf[256] = {0};
  api_->Check(api_->DriverVersion(buf, sizeof buf), "nvmlSystemGetDriverVersion");
  host.driver_version = buf;
  if (api_->CudaVersion) {
    int v = 0;
    if (api_->CudaVersion(&v) == kNvmlSuccess) host.cuda_version = std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
  }
  for (std::size_t i = 0; i < api_->devices.size(); ++i) {
    const auto d = api_->devices[i];
    char uuid[96] = {0}, name[96] = {0};
    nvmlMemory_t mem{};
    api_->Check(api_->GetUuid(d, uuid, sizeof uuid), "nvmlDeviceGetUUID");
    api_->Check(api_->GetName(d, name, sizeof name), "nvmlDeviceGetName");
    api_->Check(api_->GetMemory(d, &mem), "nvmlDeviceGetMemoryInfo");
    const auto total = static_cast<std::int64_t>(mem.total);
    host.gpus.push_back({static_cast<std::int64_t>(i), total, uuid, ModelName(name, total)});
  }
  return host;
}

std::vector<GpuReading> NvmlSampler::Read(TimeMs) {
  std::vector<GpuReading> out;
  for (std::size_t i = 0; i < api_->devices.size(); ++i) {
    const auto d = api_->devices[i];
    GpuReading r;
    r.index = static_cast<int>(i);
    nvmlUtilization_t util{};
    nvmlMemory_t mem{};
    unsigned int power = 0;
    api_->Check(api_->GetUtilization(d, &util), "nvmlDeviceGetUtilizationRates");
    api_->Check(api_->GetMemory(d, &mem), "nvmlDeviceGetMemoryInfo");
    api_->Check(api_->GetPower(d, &power), "nvmlDeviceGetPowerUsage");
    r.util_pct = static_cast<int>(std::min(util.gpu, 100u));
    r.mem_used_bytes = static_cast<std::int64_t>(mem.used);
    r.power_mw = power;
    unsigned long long energy = 0;
    const nvmlReturn_t rc = api_->GetEnergy(d, &energy);
    if (rc == kNvmlSuccess) r.energy_total_mj = static_cast<std::int64_t>(energy);
    else if (rc != kNvmlNotSupported) api_->Check(rc, "nvmlDeviceGetTotalEnergyConsumption");
    out.push_back(r);
  }
  return out;
}

}  // namespace spillway::agent
