// The podman launcher that ships beside the agent (agent/launchers/): what `podman run`
// it makes of a launch spec and how it stops, with a recording podman; and, where podman runs
// containers on this machine, a real container from an image imported offline.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

std::string Launcher() {
  const std::string agent = AgentBinary();
  return agent.substr(0, agent.rfind('/')) + "/spillway-podman-launcher";
}

std::vector<std::string> Args(const std::string& path) {  // NUL-separated, as the fake records them
  std::ifstream f(path, std::ios::binary);
  std::vector<std::string> out;
  for (std::string a; std::getline(f, a, '\0');) out.push_back(a);
  return out;
}

bool Has(const std::vector<std::string>& args, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == flag && args[i + 1] == value) return true;
  return false;
}

// "podman" that records each call; `run` stays up like a container until `stop` ends it.
std::string WriteFakePodman(const std::string& dir) {
  const std::string path = dir + "/podman";
  std::ofstream(path) << "#!/bin/bash\n"
                         "d=" << dir << "\n"
                         "case \"$1\" in\n"
                         "run)\n"
                         "  name=; prev=; for a in \"$@\"; do [ \"$prev\" = --name ] && name=$a; prev=$a; done\n"
                         "  printf '%s\\0' \"$@\" > $d/$name.run\n"
                         "  echo $$ > $d/$name.pid\n"
                         "  trap 'exit 0' TERM\n"
                         "  while :; do sleep 0.1; done ;;\n"
                         "stop)\n"
                         "  printf '%s\\0' \"$@\" > $d/${@: -1}.stop\n"
                         "  kill $(cat $d/${@: -1}.pid) ;;\n"
                         "esac\n";
  ::chmod(path.c_str(), 0755);
  return path;
}

}  // namespace

class PodmanLauncher : public FleetTest {
 protected:
  void StartAgent(const std::string& launcher, const std::string& grace = "3s") {
    volume_root_ = fleet_->state_dir + "/volumes";
    agent_ = fleet_->StartAgent("us-east", "H100-80GB", 1, 8,
                                {"--runtime", "exec", "--stop-grace", grace, "--launcher", launcher, "--volume-root",
                                 volume_root_, "--public-address", "127.0.0.1", "--port-range", "22100-22199"});
    ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
  }
  std::string NewVolume() {
    const auto r = fleet_->Call("POST", "/v1/volumes", member_, R"({"name":"v","region":"us-east","size_gb":10})");
    EXPECT_EQ(r.status, 201) << r.body;
    return Str(Json(r), "id");
  }
  std::string volume_root_;
  std::unique_ptr<Process> agent_;
};

TEST_F(PodmanLauncher, RunsTheSpecAsOneContainerWithOnlyItsGpusAndStopsItWithinTheGrace) {
  StartFleet(8);
  const std::string dir = fleet_->state_dir + "/fake";
  ::mkdir(dir.c_str(), 0755);
  StartAgent("SPW_PODMAN=" + WriteFakePodman(dir) + " " + Launcher());
  auto r = fleet_->Call("POST", "/v1/ssh-keys", member_,
                        R"({"name":"k","public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqzKrdyTTFE3V4KeapNNRa6weyLwwp99yqnlQ9XqnNG a@b"})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string key = Str(Json(r), "id"), volume = NewVolume();
  r = fleet_->Call("POST", "/v1/instances", member_,
                   R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand","image":"docker.io/library/busybox:1.36",)"
                   R"("command":["sh","-c","echo hi; sleep 1000"],"env":{"MODE":"eval"},"ssh_key_ids":[")" + key +
                       R"("],"ports":[{"port":8000,"protocol":"http"}],"volumes":[{"volume_id":")" + volume +
                       R"(","mount_path":"/data"}]})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = Str(Json(r), "id"), name = "spillway-" + id;
  ASSERT_TRUE(fleet_->WaitState(member_, id, "running"));
  ASSERT_TRUE(WaitFor([&] { return ::access((dir + "/" + name + ".run").c_str(), F_OK) == 0; }, 10s))
      << agent_->Stderr();
  const auto args = Args(dir + "/" + name + ".run");
  const auto instance = fleet_->Instance(member_, id);
  const auto gpu = instance.at("gpu_indices").as_array()[0].as_int64();
  std::map<std::int64_t, std::int64_t> external;
  for (const auto& m : instance.at("port_mappings").as_array())
    external[m.at("internal").as_int64()] = m.at("external").as_int64();
  ASSERT_EQ(external.size(), 2u);
  ASSERT_GE(args.size(), 4u);
  EXPECT_EQ(args[0], "run");
  EXPECT_TRUE(Has(args, "--name", name));
  EXPECT_TRUE(Has(args, "--device", "nvidia.com/gpu=" + std::to_string(gpu)));
  int devices = 0;
  for (const auto& a : args) devices += a == "--device";
  EXPECT_EQ(devices, 1) << "the container sees only its own GPU";
  EXPECT_TRUE(Has(args, "--publish", std::to_string(external[8000]) + ":8000/tcp"));
  EXPECT_TRUE(Has(args, "--publish", std::to_string(external[22]) + ":22/tcp"));
  EXPECT_TRUE(Has(args, "--volume", volume_root_ + "/" + volume + ":/data"));
  bool keys = false, env_file = false;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    keys |= args[i] == "--volume" && args[i + 1].find(":/root/.ssh/authorized_keys:ro") != std::string::npos;
    env_file |= args[i] == "--env-file" && args[i + 1].size() > 4 && args[i + 1].substr(args[i + 1].size() - 4) == ".env";
  }
  EXPECT_TRUE(keys);
  EXPECT_TRUE(env_file);
  const std::vector<std::string> tail(args.end() - 4, args.end());
  EXPECT_EQ(tail, (std::vector<std::string>{"docker.io/library/busybox:1.36", "sh", "-c", "echo hi; sleep 1000"}));

  ASSERT_EQ(fleet_->Call("DELETE", "/v1/instances/" + id, member_).status, 200);
  ASSERT_TRUE(fleet_->WaitState(member_, id, "terminated")) << agent_->Stderr();
  ASSERT_TRUE(WaitFor([&] { return ::access((dir + "/" + name + ".stop").c_str(), F_OK) == 0; }, 10s));
  EXPECT_EQ(Args(dir + "/" + name + ".stop"), (std::vector<std::string>{"stop", "--time", "1", name}));
}

// Needs podman able to run containers here and Debian's busybox-static (an image imported offline):
// skipped otherwise, saying why.
TEST_F(PodmanLauncher, ARealContainerGetsItsEnvCommandPortAndAVolumeThatOutlivesIt) {
  const std::string image = "localhost/spillway-test-busybox:1";
  std::string out;
  if (::access("/bin/busybox", X_OK) != 0) GTEST_SKIP() << "no /bin/busybox (Debian's busybox-static)";
  if (RunCommand({"/bin/sh", "-c", "command -v podman"}, {}, &out) != 0) GTEST_SKIP() << "podman is not installed";
  const std::string root = "/tmp/spw-podman-image-" + std::to_string(::getpid());
  RunCommand({"/bin/sh", "-c",
              "set -e; mkdir -p " + root + "/bin && cp /bin/busybox " + root + "/bin/ && for c in sh echo cat sleep true "
              "httpd mkdir; do ln -sf busybox " + root + "/bin/$c; done && tar -C " + root + " -cf " + root +
              ".tar . && podman import -q " + root + ".tar " + image + " >/dev/null; rm -rf " + root + " " + root + ".tar"},
             {}, &out);
  // Podman as it comes, or else as a sandbox without cgroup v2 needs it: runc, and no default
  // rlimits (crun refuses hybrid cgroups; setting rlimits is not permitted there).
  std::string podman = "podman";
  if (RunCommand({"/bin/sh", "-c", "podman run --rm " + image + " /bin/true 2>&1"}, {}, &out) != 0) {
    const std::string first = out, dir = "/tmp/spw-podman-" + std::to_string(::getpid());
    ::mkdir(dir.c_str(), 0755);
    std::ofstream(dir + "/containers.conf") << "[containers]\ndefault_ulimits = []\n";
    podman = dir + "/podman";
    std::ofstream(podman) << "#!/bin/sh\nexec env CONTAINERS_CONF=" << dir
                          << "/containers.conf podman --runtime runc \"$@\"\n";
    ::chmod(podman.c_str(), 0755);
    if (RunCommand({"/bin/sh", "-c", podman + " run --rm " + image + " /bin/true 2>&1"}, {}, &out) != 0)
      GTEST_SKIP() << "podman cannot run containers on this machine: " << first << "; with runc: " << out;
  }

  StartFleet(8);
  StartAgent("SPW_PODMAN=" + podman + " SPW_PODMAN_GPUS=none " + Launcher(), "10s");
  auto gone = [&](const std::string& id) {  // podman stop ran to the end: no container left
    return RunCommand({"/bin/sh", "-c", podman + " container exists spillway-" + id}, {}, &out) == 1;
  };
  const std::string volume = NewVolume();
  auto launch = [&]() {
    const auto r = fleet_->Call(
        "POST", "/v1/instances", member_,
        R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand","image":")" + image +
            R"(","command":["/bin/sh","-c","mkdir -p /www; cat /data/note > /www/seen 2>/dev/null; echo $MODE > /data/note; )"
            R"(echo $MODE > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8000 -h /www & wait"],"env":{"MODE":"eval"},)"
            R"("ports":[{"port":8000,"protocol":"http"}],"volumes":[{"volume_id":")" + volume + R"(","mount_path":"/data"}]})");
    EXPECT_EQ(r.status, 201) << r.body;
    return Str(Json(r), "id");
  };
  const std::string first = launch();
  ASSERT_TRUE(fleet_->WaitState(member_, first, "running"));
  auto external_port = [&](const std::string& id) {
    const auto instance = fleet_->Instance(member_, id);
    std::int64_t port = 0;
    for (const auto& m : instance.at("port_mappings").as_array()) port = m.at("external").as_int64();
    return port;
  };
  std::int64_t port = external_port(first);
  ASSERT_TRUE(WaitFor([&] { return Http(static_cast<int>(port), "GET", "/").body == "eval\n"; }, 60s)) << agent_->Stderr();
  ASSERT_EQ(fleet_->Call("DELETE", "/v1/instances/" + first, member_).status, 200);
  ASSERT_TRUE(fleet_->WaitState(member_, first, "terminated", 30s));
  ASSERT_TRUE(WaitFor([&] { return gone(first); }, 30s)) << "the container outlived its instance";
  EXPECT_EQ(Str(Json(fleet_->Call("GET", "/v1/volumes/" + volume, member_)), "state"), "available");
  std::ifstream note(volume_root_ + "/" + volume + "/note");
  std::string text;
  std::getline(note, text);
  EXPECT_EQ(text, "eval") << "the container's write to its volume is not on the host";
  const std::string second = launch();
  ASSERT_TRUE(fleet_->WaitState(member_, second, "running"));
  port = external_port(second);
  EXPECT_TRUE(WaitFor([&] { return Http(static_cast<int>(port), "GET", "/seen").body == "eval\n"; }, 60s))
      << "the second instance does not see what the first left on the volume";
  ASSERT_EQ(fleet_->Call("DELETE", "/v1/instances/" + second, member_).status, 200);
  EXPECT_TRUE(fleet_->WaitState(member_, second, "terminated", 30s));
  EXPECT_TRUE(WaitFor([&] { return gone(second); }, 30s)) << "the container outlived its instance";
}
