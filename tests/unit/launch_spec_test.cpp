// The launch spec's rules (image references, env names, mount paths, CUDA versions, the ports an
// instance is mapped) and placement by CUDA version and free ports, with the 409 saying what fits.
#include <gtest/gtest.h>

#include "core/errors.hpp"
#include "provisioning/fleet.hpp"
#include "provisioning/launch_spec.hpp"

using namespace spillway;

TEST(ImageReference, AcceptsWhatRegistriesServe) {
  for (const char* ok : {"ubuntu", "ubuntu:24.04", "library/ubuntu", "docker.io/library/ubuntu:24.04",
                         "nvcr.io/nvidia/pytorch:24.05-py3", "localhost:5000/team/model_server__v2:latest",
                         "localhost/spw-busybox:test", "ghcr.io/org/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                         "registry.example.com:443/a/b/c:v1.2.3-rc.1", "quay.io/a-b/c.d"})
    EXPECT_TRUE(IsImageReference(ok)) << ok;
}

TEST(ImageReference, RefusesWhatIsNotOne) {
  for (const char* bad : {"", "Ubuntu", "ubuntu:", ":latest", "ubuntu:24.04:1", "a//b", "/ubuntu", "ubuntu/",
                          "ubuntu@sha256:abc", "-ubuntu", "ubuntu-", "ubu ntu", "docker.io/Library/ubuntu",
                          "ubuntu:-tag", "bad_domain_/x", "host:port/x", "a..b"})
    EXPECT_FALSE(IsImageReference(bad)) << bad;
  EXPECT_FALSE(IsImageReference(std::string(256, 'a')));
}

TEST(LaunchRules, EnvNamesMountPathsAndCudaVersions) {
  EXPECT_TRUE(IsEnvName("HF_TOKEN"));
  EXPECT_TRUE(IsEnvName("_x1"));
  EXPECT_FALSE(IsEnvName("1X"));
  EXPECT_FALSE(IsEnvName("A-B"));
  EXPECT_FALSE(IsEnvName(""));
  EXPECT_TRUE(IsReservedEnvName("CUDA_VISIBLE_DEVICES"));
  EXPECT_TRUE(IsReservedEnvName("SPILLWAY_SPEC_FILE"));
  EXPECT_FALSE(IsReservedEnvName("PATH"));

  EXPECT_TRUE(IsMountPath("/data"));
  EXPECT_TRUE(IsMountPath("/mnt/models-v2/cache_1"));
  for (const char* bad : {"/", "data", "/data/", "/a//b", "/a/../b", "/a/./b", "/with space", "/a:b"})
    EXPECT_FALSE(IsMountPath(bad)) << bad;

  EXPECT_TRUE(CudaAtLeast("12.8", "12.8"));
  EXPECT_TRUE(CudaAtLeast("12.10", "12.8"));  // numbers, not strings
  EXPECT_TRUE(CudaAtLeast("13.0", "12.8"));
  EXPECT_FALSE(CudaAtLeast("12.4", "12.8"));
  EXPECT_FALSE(CudaAtLeast("", "12.8"));  // a host that did not say is no match
}

TEST(LaunchRules, SshKeysBringPort22AndEveryBadFieldIsNamed) {
  LaunchSpec s;
  s.ports = {{8000, "http"}};
  EXPECT_EQ(PortsToMap(s).size(), 1u);
  s.ssh_key_ids = {"ssh_01m8cp7es1z5m5w25wwsax594h"};
  const auto ports = PortsToMap(s);
  ASSERT_EQ(ports.size(), 2u);
  EXPECT_EQ(ports[0].port, 22);
  EXPECT_EQ(ports[0].protocol, "tcp");
  s.ports.push_back({22, "tcp"});
  EXPECT_EQ(PortsToMap(s).size(), 2u);  // asked for already: not twice

  auto message = [](const LaunchSpec& spec) -> std::string {
    try {
      CheckLaunchSpec(spec);
    } catch (const InvalidInput& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(message(LaunchSpec{}), "");
  LaunchSpec bad;
  bad.image = "Not An Image";
  EXPECT_EQ(message(bad).rfind("image:", 0), 0u);
  bad = {};
  bad.env = {{"CUDA_VISIBLE_DEVICES", "0"}};
  EXPECT_EQ(message(bad).rfind("env.CUDA_VISIBLE_DEVICES:", 0), 0u);
  // Every control character, and the Unicode line breaks, in an env value: one line wherever it is written.
  for (const std::string& value : std::vector<std::string>{"line\nbreak", std::string("nul\0x", 5), "tab\there", "vertical\vtab", "cr\r",
                                  "esc\x1b[0m", "del\x7f", "next\xc2\x85line", "c1\xc2\x9f", "line\xe2\x80\xa8sep",
                                  "para\xe2\x80\xa9sep"}) {
    bad.env = {{"OK", value}};
    EXPECT_EQ(message(bad).rfind("env.OK:", 0), 0u) << value;
  }
  bad.env = {{"OK", "caf\xc3\xa9 \xe2\x82\xac 100% = ok; \"quoted\" \\ \xf0\x9f\x9a\x80"}};
  EXPECT_EQ(message(bad), "");
  bad = {};
  bad.ports = {{8000, "udp"}};
  EXPECT_EQ(message(bad).rfind("ports[0].protocol:", 0), 0u);
  bad.ports = {{8000, "http"}, {8000, "tcp"}};
  EXPECT_EQ(message(bad).rfind("ports:", 0), 0u);
  bad = {};
  bad.volumes = {{"vol_01m8cp7es1z5m5w25wwsax594h", "/"}};
  EXPECT_EQ(message(bad).rfind("volumes[0].mount_path:", 0), 0u);
  for (const char* path : {"/proc", "/proc/1", "/sys", "/sys/fs/cgroup", "/dev", "/dev/shm", "/etc", "/etc/ssh",
                           "/usr", "/usr/local", "/bin", "/sbin", "/lib", "/lib64", "/libx32", "/lib/modules", "/boot",
                           "/run", "/run/secrets"}) {
    bad.volumes = {{"vol_01m8cp7es1z5m5w25wwsax594h", path}};
    EXPECT_EQ(message(bad).rfind("volumes[0].mount_path:", 0), 0u) << path;
  }
  for (const char* path : {"/data", "/etcetera", "/home/user/data", "/mnt/lib", "/workspace/run", "/srv/proc"}) {
    bad.volumes = {{"vol_01m8cp7es1z5m5w25wwsax594h", path}};
    EXPECT_EQ(message(bad), "") << path;
  }
  bad.volumes = {{"nope", "/data"}};
  EXPECT_EQ(message(bad).rfind("volumes[0].volume_id:", 0), 0u);
  bad = {};
  bad.min_cuda = "twelve";
  EXPECT_EQ(message(bad).rfind("min_cuda:", 0), 0u);
  bad = {};
  bad.ssh_key_ids = {"ssh_01m8cp7es1z5m5w25wwsax594h", "ssh_01m8cp7es1z5m5w25wwsax594h"};
  EXPECT_EQ(message(bad).rfind("ssh_key_ids:", 0), 0u);
}

namespace {
HostSlot Host(const std::string& id, std::vector<int> free, const std::string& cuda, std::int64_t ports = 100) {
  HostSlot h;
  h.id = id;
  h.gpu_count = 8;
  h.free = std::move(free);
  h.placeable = true;
  h.cuda_version = cuda;
  h.free_ports = ports;
  return h;
}
std::string Refusal(const PoolState& p, const PlacementNeeds& n) {
  try {
    PlanPlacement(p, n);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 409);
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Placement, MinCudaChoosesAmongHostsThatHaveItAndSaysWhatWouldFit) {
  PoolState p;
  p.region = "us-east";
  p.gpu_model = "H100-80GB";
  p.total = 32;
  p.hosts = {Host("a", {0, 1, 2, 3, 4, 5, 6, 7}, "12.4"), Host("b", {0, 1, 2, 3, 4, 5, 6, 7}, "12.4"),
             Host("c", {0, 1, 2, 3, 4, 5, 6, 7}, "12.2"), Host("d", {0, 1}, "12.8")};
  EXPECT_EQ(PlanPlacement(p, PlacementNeeds{2, Market::kOnDemand, std::string("12.8")}).host_id, "d");
  EXPECT_EQ(PlanPlacement(p, PlacementNeeds{2, Market::kSpot, std::string("12.8")}).host_id, "d");
  EXPECT_EQ(Refusal(p, PlacementNeeds{8, Market::kOnDemand, std::string("12.8")}),
            "no host in us-east has 8 free H100-80GB GPUs with CUDA ≥ 12.8; 2 have with CUDA 12.4, 1 with CUDA 12.2");
  EXPECT_EQ(Refusal(p, PlacementNeeds{8, Market::kSpot, std::string("12.8")}),
            "no host in us-east has 8 free H100-80GB GPUs with CUDA ≥ 12.8; 2 have with CUDA 12.4, 1 with CUDA 12.2");
  EXPECT_EQ(PlanPlacement(p, PlacementNeeds{8, Market::kOnDemand, std::string("12.4")}).host_id, "a");
}

TEST(Placement, AHostWithTooFewPortsLeftTakesNoInstanceThatNeedsThem) {
  PoolState p;
  p.region = "us-east";
  p.gpu_model = "H100-80GB";
  p.total = 16;
  p.hosts = {Host("a", {0, 1, 2, 3}, "12.8", 1), Host("b", {0, 1, 2, 3, 4, 5, 6, 7}, "12.8", 0)};
  EXPECT_EQ(PlanPlacement(p, PlacementNeeds{1, Market::kOnDemand, std::nullopt, 1}).host_id, "a");
  EXPECT_EQ(PlanPlacement(p, PlacementNeeds{1, Market::kOnDemand, std::nullopt, 0}).host_id, "a");  // best fit
  EXPECT_EQ(Refusal(p, PlacementNeeds{1, Market::kOnDemand, std::nullopt, 2}),
            "no host in us-east has 1 free H100-80GB GPUs with 2 ports to map; 2 have them free but too few ports to map");
}
