// Workloads: what a tenant runs (image, command, env), how it gets in (SSH keys, port mappings) and
// where its data lives (volumes), from POST /v1/instances through the assignment to the launcher an
// exec-runtime agent starts — a recording launcher, run by a real agent against a real apiserver.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

const std::string kKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqzKrdyTTFE3V4KeapNNRa6weyLwwp99yqnlQ9XqnNG alice@laptop";

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A launcher that records what it was handed, counts itself into each volume, then runs.
std::string WriteRecordingLauncher(const std::string& dir) {
  const std::string path = dir + "/record-launcher";
  std::ofstream(path) << "#!/bin/sh\n"
                         "d=" << dir << "/out/$SPILLWAY_INSTANCE_ID\n"
                         "mkdir -p $d\n"
                         "env | grep -E '^(SPILLWAY_|CUDA_VISIBLE_DEVICES=)' | sort > $d/env\n"
                         "cp \"$SPILLWAY_SPEC_FILE\" $d/spec.json\n"
                         "cp \"$SPILLWAY_ENV_FILE\" $d/tenant.env\n"
                         "cp \"$SPILLWAY_COMMAND_FILE\" $d/command\n"
                         "cp \"$SPILLWAY_AUTHORIZED_KEYS_FILE\" $d/keys\n"
                         "for v in $SPILLWAY_VOLUMES; do h=${v%%:*}; cat $h/runs >> $d/seen 2>/dev/null; "
                         "echo $SPILLWAY_INSTANCE_ID >> $h/runs; done\n"
                         "touch $d/done\n"
                         "exec sleep 600\n";
  ::chmod(path.c_str(), 0755);
  return path;
}

class Workloads : public FleetTest {
 protected:
  void SetUp() override {
    StartFleet(16);
    dir_ = fleet_->state_dir + "/w";
    ::mkdir(dir_.c_str(), 0755);
    ::mkdir((dir_ + "/out").c_str(), 0755);
    volume_root_ = dir_ + "/volumes";
    agent_ = fleet_->StartAgent("us-east", "H100-80GB", 1, 8,
                                {"--runtime", "exec", "--stop-grace", "2s", "--launcher", WriteRecordingLauncher(dir_),
                                 "--volume-root", volume_root_, "--public-address", "gpu-7.example.test",
                                 "--port-range", "21000-21009", "--cuda-version", "12.8", "--hostname",
                                 "wl-" + std::to_string(::getpid())});
    ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
    auto r = fleet_->Call("POST", "/v1/ssh-keys", member_, R"({"name":"alice","public_key":")" + kKey + "\"}");
    ASSERT_EQ(r.status, 201) << r.body;
    key_id_ = Str(Json(r), "id");
    r = fleet_->Call("POST", "/v1/volumes", member_, R"({"name":"data","region":"us-east","size_gb":50})");
    ASSERT_EQ(r.status, 201) << r.body;
    volume_ = Str(Json(r), "id");
  }
  std::string Spec(const std::string& extra = "") {
    return R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand",)"
           R"("image":"nvcr.io/nvidia/pytorch:24.05-py3","command":["python3","-m","http.server","8000"],)"
           R"("env":{"HF_TOKEN":"hf_secret_value_123","MODE":"eval"},"ssh_key_ids":[")" +
           key_id_ + R"("],"ports":[{"port":8000,"protocol":"http"}],"disk_gb":100,)"
           R"("volumes":[{"volume_id":")" + volume_ + R"(","mount_path":"/data"}],"min_cuda":"12.4")" + extra + "}";
  }
  std::string Out(const std::string& id, const std::string& file) { return dir_ + "/out/" + id + "/" + file; }
  std::string dir_, volume_root_, key_id_, volume_;
  std::unique_ptr<Process> agent_;
};

}  // namespace

TEST_F(Workloads, ALaunchSpecReachesTheLauncherAndTheInstanceShowsWhereToConnect) {
  auto r = fleet_->Call("POST", "/v1/instances", member_, Spec());
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(r.body.find("hf_secret_value_123"), std::string::npos) << "an env value came back: " << r.body;
  auto i = Json(r);
  const std::string id = Str(i, "id");
  EXPECT_EQ(Str(i, "image"), "nvcr.io/nvidia/pytorch:24.05-py3");
  EXPECT_EQ(i.at("env_names"), boost::json::parse(R"(["HF_TOKEN","MODE"])"));
  EXPECT_EQ(i.at("command").as_array().size(), 4u);
  EXPECT_EQ(i.at("ports"), boost::json::parse(R"([{"port":22,"protocol":"tcp"},{"port":8000,"protocol":"http"}])"));
  EXPECT_EQ(i.at("volumes"), boost::json::parse(R"([{"volume_id":")" + volume_ + R"(","mount_path":"/data"}])"));
  EXPECT_EQ(i.at("disk_gb").as_int64(), 100);
  EXPECT_EQ(Str(i, "min_cuda"), "12.4");
  EXPECT_EQ(Str(Json(fleet_->Call("GET", "/v1/volumes/" + volume_, member_)), "attached_instance_id"), id);

  ASSERT_TRUE(fleet_->WaitState(member_, id, "running"));
  i = fleet_->Instance(member_, id);
  EXPECT_EQ(fleet_->Call("GET", "/v1/instances/" + id, member_).body.find("hf_secret_value_123"), std::string::npos);
  const auto& ssh = i.at("ssh");
  ASSERT_TRUE(ssh.is_object()) << i;
  EXPECT_EQ(Str(ssh, "host"), "gpu-7.example.test");
  EXPECT_EQ(Str(ssh, "user"), "root");
  const auto mappings = i.at("port_mappings").as_array();
  ASSERT_EQ(mappings.size(), 2u) << i;
  std::set<std::int64_t> external;
  std::int64_t http_port = 0;
  for (const auto& m : mappings) {
    const auto port = m.at("external").as_int64();
    EXPECT_TRUE(port >= 21000 && port <= 21009) << m;
    external.insert(port);
    if (m.at("internal").as_int64() == 8000) {
      http_port = port;
      EXPECT_EQ(Str(m, "url"), "http://gpu-7.example.test:" + std::to_string(port) + "/");
    } else {
      EXPECT_EQ(ssh.at("port").as_int64(), port);
      EXPECT_EQ(Str(m, "url"), "tcp://gpu-7.example.test:" + std::to_string(port));
    }
  }
  EXPECT_EQ(external.size(), 2u);

  // What the launcher was handed: everything, env values included, through files and variables.
  ASSERT_TRUE(WaitFor([&] { return ::access(Out(id, "done").c_str(), F_OK) == 0; }, 10s)) << agent_->Stderr();
  const std::string env = ReadAll(Out(id, "env"));
  EXPECT_NE(env.find("SPILLWAY_IMAGE=nvcr.io/nvidia/pytorch:24.05-py3\n"), std::string::npos) << env;
  EXPECT_NE(env.find("8000:" + std::to_string(http_port) + "/http"), std::string::npos) << env;
  EXPECT_NE(env.find("SPILLWAY_VOLUMES=" + volume_root_ + "/" + volume_ + ":/data\n"), std::string::npos) << env;
  EXPECT_NE(env.find("SPILLWAY_DISK_GB=100\n"), std::string::npos) << env;
  EXPECT_NE(env.find("SPILLWAY_STOP_GRACE_SECONDS=2\n"), std::string::npos) << env;
  std::string gpus;
  for (const auto& g : i.at("gpu_indices").as_array()) gpus += (gpus.empty() ? "" : ",") + std::to_string(g.as_int64());
  EXPECT_NE(env.find("CUDA_VISIBLE_DEVICES=" + gpus + "\n"), std::string::npos) << env;
  EXPECT_EQ(ReadAll(Out(id, "tenant.env")), "HF_TOKEN=hf_secret_value_123\nMODE=eval\n");
  {  // At rest the values are sealed: the column holds no plain text, each value under the test key.
    auto conn = db_->Connect();
    const std::string stored = pqxx::nontransaction(*conn).exec_params1("SELECT env::text FROM instances WHERE id = $1", id)[0].as<std::string>();
    EXPECT_EQ(stored.find("hf_secret_value_123"), std::string::npos) << stored;
    EXPECT_EQ(stored.find("eval"), std::string::npos) << stored;
    const auto sealed = boost::json::parse(stored).as_object();
    ASSERT_EQ(sealed.size(), 2u) << stored;
    for (const auto& [name, value] : sealed) EXPECT_EQ(std::string(value.as_string()).rfind("spw1:test1:", 0), 0u) << stored;
  }
  EXPECT_EQ(ReadAll(Out(id, "command")), std::string("python3\0-m\0http.server\0008000\0", 28));
  EXPECT_EQ(ReadAll(Out(id, "keys")), kKey + "\n");
  const auto spec = boost::json::parse(ReadAll(Out(id, "spec.json")));
  EXPECT_EQ(Str(spec, "instance_id"), id);
  EXPECT_EQ(Str(spec.at("volumes").as_array()[0], "host_path"), volume_root_ + "/" + volume_);
  EXPECT_EQ(Str(spec.at("env"), "HF_TOKEN"), "hf_secret_value_123");
  // The tenant's secrets are readable by the agent's user only.
  struct stat st {};
  const std::string state = fleet_->state_dir + "/wl-" + std::to_string(::getpid()) + "-us-east-0/" + id;
  ASSERT_EQ(::stat((state + ".env").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((state + ".spec.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // One instance at a time per volume; a volume outlives its instance and follows the next.
  r = fleet_->Call("POST", "/v1/instances", member_, Spec());
  EXPECT_EQ(r.status, 409);
  EXPECT_NE(r.body.find("volume_attached"), std::string::npos) << r.body;
  EXPECT_EQ(fleet_->Call("DELETE", "/v1/volumes/" + volume_, member_).status, 409);
  ASSERT_EQ(fleet_->Call("DELETE", "/v1/instances/" + id, member_).status, 200);
  ASSERT_TRUE(fleet_->WaitState(member_, id, "terminated"));
  EXPECT_TRUE(Json(fleet_->Call("GET", "/v1/volumes/" + volume_, member_)).at("attached_instance_id").is_null());
  EXPECT_TRUE(fleet_->Instance(member_, id).at("port_mappings").as_array().empty());
  EXPECT_TRUE(fleet_->Instance(member_, id).at("ssh").is_null());
  r = fleet_->Call("POST", "/v1/instances", member_, Spec());
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string second = Str(Json(r), "id");
  ASSERT_TRUE(fleet_->WaitState(member_, second, "running"));
  ASSERT_TRUE(WaitFor([&] { return ::access(Out(second, "done").c_str(), F_OK) == 0; }, 10s));
  EXPECT_EQ(ReadAll(Out(second, "seen")), id + "\n") << "the volume's data did not outlive its first instance";
}

TEST_F(Workloads, EveryBadFieldIsA422NamingItAndChangesNothing) {
  const std::string base = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand",)";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("image":"Not An Image")", "image:"},
      {R"("image":7)", "image:"},
      {R"("command":"python3 train.py")", "command:"},
      {R"("command":["ok",3])", "command[1]:"},
      {R"("env":{"1BAD":"x"})", "env.1BAD:"},
      {R"("env":{"CUDA_VISIBLE_DEVICES":"0,1,2,3"})", "env.CUDA_VISIBLE_DEVICES:"},
      {R"("env":{"A":1})", "env.A:"},
      {R"("env":{"A":"one\u2028two"})", "env.A:"},
      {R"("env":{"A":"one\u0085two"})", "env.A:"},
      {R"("env":{"A":"one\u000btwo"})", "env.A:"},
      {R"("env":{"A":"one\ttwo"})", "env.A:"},
      {R"("env":["A=1"])", "env:"},
      {R"("ssh_key_ids":["ssh_01m8cp7es1z5m5w25wwsax594h"])", "ssh_key_ids:"},
      {R"("ssh_key_ids":["not-an-id"])", "ssh_key_ids:"},
      {R"("ports":[{"port":8000,"protocol":"udp"}])", "ports[0].protocol:"},
      {R"("ports":[{"port":80},{"port":70000}])", "ports[1].port:"},
      {R"("ports":[{"port":80,"proto":"tcp"}])", "ports[0].proto"},
      {R"("ports":[{"port":8000},{"port":8000}])", "ports:"},
      {R"("disk_gb":0)", "disk_gb:"},
      {R"("volumes":[{"volume_id":"vol_01m8cp7es1z5m5w25wwsax594h","mount_path":"/data"}])", "volumes: this tenant has no volume"},
      {R"("volumes":[{"volume_id":"x","mount_path":"relative"}])", "volumes[0].volume_id:"},
      {R"("volumes":[{"volume_id":"vol_01m8cp7es1z5m5w25wwsax594h","mount_path":"/etc"}])", "volumes[0].mount_path:"},
      {R"("volumes":[{"volume_id":"vol_01m8cp7es1z5m5w25wwsax594h","mount_path":"/proc"}])", "volumes[0].mount_path:"},
      {R"("volumes":[{"volume_id":"vol_01m8cp7es1z5m5w25wwsax594h","mount_path":"/usr/lib"}])", "volumes[0].mount_path:"},
      {R"("volumes":[{"mount_path":"/data"}])", "volumes[0].volume_id:"},
      {R"("min_cuda":"twelve")", "min_cuda:"},
      {R"("mystery":true)", "mystery"},
  };
  for (const auto& [field, expected] : cases) {
    const auto r = fleet_->Call("POST", "/v1/instances", member_, base + field + "}");
    EXPECT_EQ(r.status, 422) << field << " -> " << r.body;
    EXPECT_NE(r.body.find("\"message\":\"" + expected), std::string::npos) << field << " -> " << r.body;
  }
  auto r = fleet_->Call("POST", "/v1/instances", member_,
                        base + R"("volumes":[{"volume_id":")" + volume_ + R"(","mount_path":"/"}]})");
  EXPECT_EQ(r.status, 422);
  EXPECT_NE(r.body.find("volumes[0].mount_path:"), std::string::npos) << r.body;
  // Another tenant's key or volume is not this tenant's to name.
  const std::string other = fleet_->NewKey(fleet_->NewTenant("other", 8), "member");
  r = fleet_->Call("POST", "/v1/instances", other, base + R"("ssh_key_ids":[")" + key_id_ + "\"]}");
  EXPECT_EQ(r.status, 422) << r.body;
  r = fleet_->Call("POST", "/v1/instances", other,
                   base + R"("volumes":[{"volume_id":")" + volume_ + R"(","mount_path":"/data"}]})");
  EXPECT_EQ(r.status, 422) << r.body;
  EXPECT_TRUE(Json(fleet_->Call("GET", "/v1/instances", member_)).at("data").as_array().empty());
  EXPECT_TRUE(Json(fleet_->Call("GET", "/v1/volumes/" + volume_, member_)).at("attached_instance_id").is_null());
}

TEST_F(Workloads, PlacementHonoursMinCudaAndSaysWhatWouldFit) {
  const std::string base = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand","min_cuda":")";
  auto r = fleet_->Call("POST", "/v1/instances", member_, base + "12.9\"}");
  EXPECT_EQ(r.status, 409);
  EXPECT_NE(r.body.find("no host in us-east has 1 free H100-80GB GPUs with CUDA ≥ 12.9; 1 has with CUDA 12.8"),
            std::string::npos)
      << r.body;
  r = fleet_->Call("POST", "/v1/instances", member_, base + "12.8\"}");
  EXPECT_EQ(r.status, 201) << r.body;
}

TEST_F(Workloads, AVolumeAttachesOnlyInItsRegionAndTheSpecIsPartOfTheIdempotencyKey) {
  auto r = fleet_->Call("POST", "/v1/agent/register", "test-bootstrap-token",
                        R"({"hostname":"eu-1","region":"eu-north","zone":"eu-north-1a","gpus":[)"
                        R"({"index":0,"uuid":"GPU-eu0","model":"H100-80GB","memory_bytes":85899345920}]})");
  ASSERT_EQ(r.status, 201) << r.body;
  r = fleet_->Call("POST", "/v1/instances", member_,
                   R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand","volumes":[{"volume_id":")" +
                       volume_ + R"(","mount_path":"/data"}]})");
  EXPECT_EQ(r.status, 409);
  EXPECT_NE(r.body.find("volume_region_mismatch"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("is in us-east; the instance is launched in eu-north"), std::string::npos) << r.body;

  const std::string body = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand","env":{"A":"1"}})";
  r = fleet_->Call("POST", "/v1/instances", member_, body, {{"Idempotency-Key", "launch-1"}});
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(fleet_->Call("POST", "/v1/instances", member_, body, {{"Idempotency-Key", "launch-1"}}).body, r.body);
  const std::string changed = R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand","env":{"A":"2"}})";
  r = fleet_->Call("POST", "/v1/instances", member_, changed, {{"Idempotency-Key", "launch-1"}});
  EXPECT_EQ(r.status, 422);
  EXPECT_NE(r.body.find("idempotency_key_reused"), std::string::npos) << r.body;
}

TEST_F(Workloads, AnExternalPortIsLiveOnceOnAHostWhateverTheCodeDoes) {
  const auto r = fleet_->Call("POST", "/v1/instances", member_,
                              R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand","ports":[{"port":80}]})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string a = Str(Json(r), "id");
  auto c = db_->Connect();
  pqxx::work tx(*c);
  const auto taken = tx.exec_params1("SELECT host_id, external_port FROM instance_ports WHERE instance_id = $1", a);
  const std::string host = taken[0].as<std::string>();
  const int port = taken[1].as<int>();
  EXPECT_THROW(tx.exec_params("INSERT INTO instance_ports (instance_id, internal_port, protocol, host_id, external_port) "
                              "VALUES ($1, 81, 'tcp', $2, $3)",
                              a, host, port),
               pqxx::unique_violation);
}
