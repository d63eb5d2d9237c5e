// A stand-in for libnvidia-ml.so.1 with the same symbols, built as that file name, so the nvml
// sampler is tested through its real dlopen path. Values are scripted (they follow the number of
// reads) and the environment makes it misbehave:
//   FAKE_NVML_GPUS=N            N GPUs (default 2)
//   FAKE_NVML_FAIL=<function>   that call fails with NVML_ERROR_UNKNOWN
//   FAKE_NVML_INIT=fail         nvmlInit_v2 answers NVML_ERROR_DRIVER_NOT_LOADED
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
struct Device {
  unsigned int index;
};
Device g_devices[64];
unsigned long long g_reads = 0;

int Fails(const char* fn) {
  const char* f = std::getenv("FAKE_NVML_FAIL");
  return f && std::strcmp(f, fn) == 0 ? 999 : 0;
}
unsigned int Gpus() {
  const char* n = std::getenv("FAKE_NVML_GPUS");
  return n ? static_cast<unsigned int>(std::atoi(n)) : 2u;
}
void Copy(char* out, unsigned int len, const std::string& s) {
  std::strncpy(out, s.c_str(), len);
  if (len) out[len - 1] = 0;
}
}  // namespace

extern "C" {
struct nvmlMemory_t {
  unsigned long long total, free, used;
};
struct nvmlUtilization_t {
  unsigned int gpu, memory;
};
using nvmlDevice_t = Device*;

int nvmlInit_v2() {
  const char* init = std::getenv("FAKE_NVML_INIT");
  return init && std::strcmp(init, "fail") == 0 ? 9 : 0;
}
int nvmlShutdown() { return 0; }
const char* nvmlErrorString(int rc) {
  switch (rc) {
    case 0: return "Success";
    case 3: return "Not Supported";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
  }
}
int nvmlSystemGetDriverVersion(char* out, unsigned int len) {
  Copy(out, len, "580.159.04");
  return Fails("nvmlSystemGetDriverVersion");
}
int nvmlSystemGetCudaDriverVersion(int* v) {
  *v = 12080;
  return Fails("nvmlSystemGetCudaDriverVersion");
}
int nvmlDeviceGetCount_v2(unsigned int* n) {
  *n = Gpus();
  return Fails("nvmlDeviceGetCount_v2");
}
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t* d) {
  if (i >= Gpus()) return 2;  // invalid argument
  g_devices[i].index = i;
  *d = &g_devices[i];
  return Fails("nvmlDeviceGetHandleByIndex_v2");
}
int nvmlDeviceGetUUID(nvmlDevice_t d, char* out, unsigned int len) {
  Copy(out, len, "GPU-fake-000" + std::to_string(d->index));
  return Fails("nvmlDeviceGetUUID");
}
int nvmlDeviceGetName(nvmlDevice_t, char* out, unsigned int len) {
  Copy(out, len, "NVIDIA H100 80GB HBM3");
  return Fails("nvmlDeviceGetName");
}
int nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t* m) {
  m->total = 80ull << 30;
  m->used = (d->index + 1ull) << 30;
  m->free = m->total - m->used;
  return Fails("nvmlDeviceGetMemoryInfo");
}
int nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t* u) {
  if (d->index == 0) ++g_reads;  // one read of every GPU per sample
  u->gpu = static_cast<unsigned int>((10 * g_reads + d->index) % 101);
  u->memory = 0;
  return Fails("nvmlDeviceGetUtilizationRates");
}
int nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int* mw) {
  *mw = 100000u + 1000u * d->index + static_cast<unsigned int>(g_reads);
  return Fails("nvmlDeviceGetPowerUsage");
}
int nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long* mj) {
  *mj = 1'000'000'000ull + g_reads * 700'000ull + d->index;
  return Fails("nvmlDeviceGetTotalEnergyConsumption");
}
}
