// The nvml sampler against a fake libnvidia-ml.so.1 built in this tree (fake_nvml.cpp), loaded
// through the same dlopen path as the real one: discovery, readings, and the clear errors for a
// machine without NVML and for a failing call.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "agent/sampler.hpp"

using namespace spillway;
using namespace spillway::agent;

namespace {
class Nvml : public ::testing::Test {
 protected:
  void SetUp() override {
    ::unsetenv("FAKE_NVML_FAIL");
    ::unsetenv("FAKE_NVML_INIT");
    ::setenv("FAKE_NVML_GPUS", "2", 1);
  }
  void TearDown() override { SetUp(); }
};
}  // namespace

TEST_F(Nvml, DiscoversTheHostsGpusThroughDlopen) {
  std::string why;
  auto nvml = NvmlSampler::Open(FAKE_NVML_LIB, &why);
  ASSERT_TRUE(nvml) << why;
  const auto host = nvml->Discover();
  ASSERT_EQ(host.gpus.size(), 2u);
  EXPECT_EQ(host.gpus[1].index, 1);
  EXPECT_EQ(host.gpus[1].uuid, "GPU-fake-0001");
  EXPECT_EQ(host.gpus[1].model, "H100-80GB");
  EXPECT_EQ(host.gpus[1].memory_bytes, 80LL << 30);
  EXPECT_EQ(host.driver_version, "580.159.04");
  EXPECT_EQ(host.cuda_version, "12.8");
}

TEST_F(Nvml, ReadsUtilisationMemoryPowerAndTheEnergyCounter) {
  std::string why;
  auto nvml = NvmlSampler::Open(FAKE_NVML_LIB, &why);
  ASSERT_TRUE(nvml) << why;
  const auto first = nvml->Read(NowMs());
  const auto second = nvml->Read(NowMs());
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[1].mem_used_bytes, 2LL << 30);
  EXPECT_EQ(second[1].util_pct, (first[1].util_pct + 10) % 101);
  EXPECT_EQ(second[0].power_mw, first[0].power_mw + 1);
  ASSERT_TRUE(first[0].energy_total_mj && second[0].energy_total_mj);
  EXPECT_EQ(*second[0].energy_total_mj - *first[0].energy_total_mj, 700'000);  // mJ: 70 W over the fake's 10 s
}

TEST_F(Nvml, AMachineWithoutNvmlGetsOneClearError) {
  std::string why;
  EXPECT_FALSE(NvmlSampler::Open("/nonexistent/libnvidia-ml.so.1", &why));
  EXPECT_EQ(why.rfind("nvml unavailable: ", 0), 0u) << why;
  ::setenv("FAKE_NVML_INIT", "fail", 1);
  EXPECT_FALSE(NvmlSampler::Open(FAKE_NVML_LIB, &why));
  EXPECT_EQ(why, "nvml unavailable: nvmlInit_v2: Driver Not Loaded");
}

TEST_F(Nvml, AFailingCallIsAnErrorNamingIt) {
  std::string why;
  auto nvml = NvmlSampler::Open(FAKE_NVML_LIB, &why);
  ASSERT_TRUE(nvml) << why;
  ::setenv("FAKE_NVML_FAIL", "nvmlDeviceGetPowerUsage", 1);
  try {
    nvml->Read(NowMs());
    FAIL() << "no error";
  } catch (const SamplerError& e) {
    EXPECT_STREQ(e.what(), "nvmlDeviceGetPowerUsage: Unknown Error");
  }
  ::unsetenv("FAKE_NVML_FAIL");
  EXPECT_EQ(nvml->Read(NowMs()).size(), 2u);  // and recovers when the call works again
}

TEST_F(Nvml, TheAgentExitsTwoWithTheReasonWhenNvmlIsMissing) {
  const std::string cmd = std::string(SPILLWAY_AGENT_BIN) +
                          " --api http://127.0.0.1:9 --bootstrap-token t --sampler nvml "
                          "--nvml-library /nonexistent/libnvidia-ml.so.1 --state-dir /tmp 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_TRUE(p);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int status = ::pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 2) << out;
  EXPECT_NE(out.find("nvml unavailable: "), std::string::npos) << out;
}

TEST(NvmlModelName, FollowsTheCatalogsNames) {
  EXPECT_EQ(NvmlSampler::ModelName("NVIDIA H100 80GB HBM3", 80LL << 30), "H100-80GB");
  EXPECT_EQ(NvmlSampler::ModelName("NVIDIA H200", 150'754'820'096LL), "H200-141GB");
  EXPECT_EQ(NvmlSampler::ModelName("NVIDIA A100-SXM4-80GB", 85'899'345'920LL), "A100-80GB");
}
