// Tenants' env values sealed at rest (docs/architecture.md, "Secrets"): what the column holds, and
// what the apiserver does with a missing, loose, wrong or rotated key file.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "core/secrets.hpp"
#include "provisioning/sealed_env.hpp"
#include "tests/e2e/fleet_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

class SecretsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/spw-secrets-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { RunCommand({"/bin/rm", "-rf", dir_}, {}, nullptr); }
  std::string KeyFile(const std::string& name, const std::string& text, mode_t mode = 0600) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    ::chmod(path.c_str(), mode);
    return path;
  }
  // `serve` with key_file (absent: unset) on a database of its own; its exit code and stderr,
  // for the cases where it must not start.
  int ServeRefused(const TestDb& db, const std::optional<std::string>& key_file, std::string* err) {
    std::map<std::string, std::string> env = {{"SPILLWAY_DATABASE_URL", db.dsn()},
                                              {"SPILLWAY_LISTEN", "127.0.0.1:" + std::to_string(FreePort())},
                                              {"SPILLWAY_ADMIN_LISTEN", "127.0.0.1:" + std::to_string(FreePort())}};
    if (key_file) env["SPILLWAY_SECRETS_KEY_FILE"] = *key_file;
    return RunCommand({ApiServerBinary(), "serve"}, env, err);
  }
  std::map<std::string, std::string> Env(const std::string& key_file) {
    auto env = FastFleetEnv();
    env["SPILLWAY_SECRETS_KEY_FILE"] = key_file;
    return env;
  }
  std::string StoredEnv(const TestDb& db, const std::string& id) {
    auto conn = db.Connect();
    return pqxx::nontransaction(*conn).exec_params1("SELECT env::text FROM instances WHERE id = $1", id)[0].as<std::string>();
  }
  std::string dir_;
};

}  // namespace

TEST_F(SecretsTest, AMissingLooseOrMalformedKeyFileStopsStartUp) {
  TestDb db;
  std::string err;
  EXPECT_EQ(ServeRefused(db, std::nullopt, &err), 2);
  EXPECT_NE(err.find("secrets.key_file is not set"), std::string::npos) << err;
  EXPECT_EQ(ServeRefused(db, dir_ + "/nowhere.key", &err), 2);
  EXPECT_NE(err.find("cannot be read"), std::string::npos) << err;
  EXPECT_EQ(ServeRefused(db, KeyFile("loose.key", SecretBox::NewKeyLine("k1"), 0644), &err), 2);
  EXPECT_NE(err.find("chmod 600"), std::string::npos) << err;
  EXPECT_EQ(ServeRefused(db, KeyFile("short.key", "k1 abcd\n"), &err), 2);
  EXPECT_NE(err.find("short.key:1: key k1 is not 64 hex digits"), std::string::npos) << err;
  EXPECT_EQ(ServeRefused(db, KeyFile("empty.key", "# nothing yet\n"), &err), 2);
  EXPECT_NE(err.find("holds no key"), std::string::npos) << err;
  std::string out;
  EXPECT_EQ(RunCommand({ApiServerBinary(), "new-secret-key", "k7"}, {}, &out), 0);
  EXPECT_NO_THROW(SecretBox::FromFile(KeyFile("made.key", out)));
}

TEST_F(SecretsTest, ValuesAreSealedAtRestAWrongKeyIsRefusedAndKeysRotate) {
  TestDb db;
  const std::string k1_line = SecretBox::NewKeyLine("k1"), k2_line = SecretBox::NewKeyLine("k2");
  const std::string first = KeyFile("first.key", k1_line);
  std::string legacy, sealed;
  {
    ApiServer server(db.dsn(), Env(first));
    ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
    Fleet fleet(db, server);
    const std::string member = fleet.NewKey(fleet.NewTenant("customer", 8), "member");
    auto agent = fleet.StartAgent("us-east", "H100-80GB", 1, 8);
    ASSERT_TRUE(WaitFor([&] { return fleet.PoolInt("us-east", "H100-80GB", "total_gpus") == 8; }, 20s));
    for (auto* id : {&legacy, &sealed}) {
      const auto r = fleet.Call("POST", "/v1/instances", member,
                                R"({"instance_type":"h100.1x","region":"us-east","market":"on_demand",)"
                                R"("env":{"TOKEN":"s3cret-value","EMPTY":""}})");
      ASSERT_EQ(r.status, 201) << r.body;
      *id = Str(Json(r), "id");
    }
    agent->Stop(SIGKILL);
  }
  for (const auto& id : {legacy, sealed}) {
    const std::string stored = StoredEnv(db, id);
    EXPECT_EQ(stored.find("s3cret"), std::string::npos) << stored;
    EXPECT_EQ(OpenEnv(SecretBox::FromFile(first), id, stored),
              (EnvValues{{"EMPTY", ""}, {"TOKEN", "s3cret-value"}}));
    // Bound to its place: another instance's row does not open it.
    EXPECT_THROW(OpenEnv(SecretBox::FromFile(first), id == legacy ? sealed : legacy, stored), SecretError);
  }
  {
    auto conn = db.Connect();
    pqxx::nontransaction tx(*conn);
    // The database refuses plain text whatever the code does...
    EXPECT_THROW(tx.exec_params("UPDATE instances SET env = '{\"TOKEN\":\"s3cret-value\"}' WHERE id = $1", legacy),
                 pqxx::check_violation);
  }
  {  // ...but rows from before sealing hold it: made so here, as a database migrated from then would be.
    auto conn = db.Connect();
    pqxx::work tx(*conn);
    tx.exec("ALTER TABLE instances DROP CONSTRAINT instances_env_sealed");
    tx.exec_params("UPDATE instances SET env = '{\"TOKEN\":\"s3cret-value\"}' WHERE id = $1", legacy);
    tx.exec("ALTER TABLE instances ADD CONSTRAINT instances_env_sealed "
            "CHECK (NOT jsonb_path_exists(env, '$.* ? (!(@ starts with \"spw1:\"))')) NOT VALID");
    tx.commit();
  }

  std::string err;
  // Another key under the id that sealed: refused, never a silent fallback.
  EXPECT_EQ(ServeRefused(db, KeyFile("wrong.key", SecretBox::NewKeyLine("k1")), &err), 2);
  EXPECT_NE(err.find("key k1 in " + dir_ + "/wrong.key is not the key that sealed"), std::string::npos) << err;
  // A file without the key that sealed: refused.
  EXPECT_EQ(ServeRefused(db, KeyFile("other.key", k2_line), &err), 2);
  EXPECT_NE(err.find("sealed under key k1, which " + dir_ + "/other.key does not hold"), std::string::npos) << err;

  // Rotation: a new key appended seals from now on; the old one still opens.
  const std::string both = KeyFile("both.key", k1_line + k2_line);
  {
    ApiServer server(db.dsn(), Env(both));
    ASSERT_TRUE(server.WaitReady()) << server.process().Stderr();
    EXPECT_NE(server.process().Stderr().find("env values stored before sealing are sealed now"), std::string::npos);
  }
  EXPECT_EQ(StoredEnv(db, legacy).find("s3cret"), std::string::npos) << StoredEnv(db, legacy);
  EXPECT_NE(StoredEnv(db, legacy).find("spw1:k2:"), std::string::npos) << StoredEnv(db, legacy);
  EXPECT_NE(StoredEnv(db, sealed).find("spw1:k1:"), std::string::npos) << StoredEnv(db, sealed);
  std::string out;
  ASSERT_EQ(RunCommand({ApiServerBinary(), "rotate-secrets"},
                       {{"SPILLWAY_DATABASE_URL", db.dsn()}, {"SPILLWAY_SECRETS_KEY_FILE", both}}, &out),
            0)
      << out;
  EXPECT_NE(out.find("re-sealed 2 env value(s) of 1 instance(s) under key k2"), std::string::npos) << out;
  EXPECT_NE(out.find("key k1 seals nothing any more"), std::string::npos) << out;
  const std::string second = KeyFile("second.key", k2_line);
  for (const auto& id : {legacy, sealed}) {
    const std::string stored = StoredEnv(db, id);
    EXPECT_EQ(stored.find("spw1:k1:"), std::string::npos) << stored;
    EXPECT_EQ(OpenEnv(SecretBox::FromFile(second), id, stored).back(),
              (std::pair<std::string, std::string>{"TOKEN", "s3cret-value"}));
  }
  // With every value under k2, a file holding k2 alone is enough.
  ApiServer server(db.dsn(), Env(second));
  EXPECT_TRUE(server.WaitReady()) << server.process().Stderr();
}
