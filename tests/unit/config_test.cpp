#include "core/config.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

using namespace spillway;

namespace {
std::string WriteTemp(const std::string& text) {
  char path[] = "/tmp/spillway-config-XXXXXX";
  const int fd = mkstemp(path);
  ::close(fd);
  std::ofstream(path) << text;
  return path;
}
std::string Message(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Config, DefaultFileDocumentsEveryKeyWithItsDefault) {
  const std::string file = std::string(SPILLWAY_SOURCE_DIR) + "/config/spillway.toml";
  const Config from_file = Config::Load(file, nullptr);
  const Config defaults = Config::Defaults();
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  for (const auto& spec : ConfigSchema()) {
    const auto dot = spec.name.find('.');
    const std::string key = spec.name.substr(dot + 1);
    EXPECT_NE(text.str().find("\n" + key + " = "), std::string::npos) << spec.name << " is not in spillway.toml";
    switch (spec.type) {
      case KeyType::kString: EXPECT_EQ(from_file.String(spec.name), defaults.String(spec.name)) << spec.name; break;
      case KeyType::kInt: EXPECT_EQ(from_file.Int(spec.name), defaults.Int(spec.name)) << spec.name; break;
      case KeyType::kBool: EXPECT_EQ(from_file.Bool(spec.name), defaults.Bool(spec.name)) << spec.name; break;
      case KeyType::kDuration: EXPECT_EQ(from_file.Duration(spec.name), defaults.Duration(spec.name)) << spec.name; break;
    }
  }
}

TEST(Config, UnknownKeyInFileIsRefusedByName) {
  const auto path = WriteTemp("[server]\nlisten = \"127.0.0.1:1\"\nlsiten = \"x\"\n");
  EXPECT_NE(Message([&] { Config::Load(path, nullptr); }).find("server.lsiten"), std::string::npos);
  const auto path2 = WriteTemp("[nosuch]\nkey = 1\n");
  EXPECT_NE(Message([&] { Config::Load(path2, nullptr); }).find("nosuch"), std::string::npos);
}

TEST(Config, BadValuesAreRefusedByName) {
  EXPECT_NE(Message([&] { Config::Load(WriteTemp("[server]\nio_threads = \"two\"\n"), nullptr); })
                .find("server.io_threads"),
            std::string::npos);
  EXPECT_NE(Message([&] { Config::Load(WriteTemp("[server]\nio_threads = 0\n"), nullptr); }).find("server.io_threads"),
            std::string::npos);
  EXPECT_NE(Message([&] { Config::Load(WriteTemp("[server]\nheader_timeout = \"10 parsecs\"\n"), nullptr); })
                .find("server.header_timeout"),
            std::string::npos);
  EXPECT_NE(Message([&] { Config::Load(WriteTemp("[server]\nlisten = \"nowhere\"\n"), nullptr); }).find("server.listen"),
            std::string::npos);
  EXPECT_NE(Message([&] { Config::Load(WriteTemp("[log]\nlevel = \"loud\"\n"), nullptr); }).find("log.level"),
            std::string::npos);
  EXPECT_NE(Message([&] { Config::Load(WriteTemp("[server\n"), nullptr); }), "");
}

TEST(Config, EnvironmentOverridesFileAndAliasesWork) {
  const auto path = WriteTemp("[server]\nio_threads = 3\nlisten = \"127.0.0.1:1000\"\n");
  std::string e1 = "SPILLWAY_SERVER_IO_THREADS=7", e2 = "SPILLWAY_LISTEN=127.0.0.1:2000",
              e3 = "SPILLWAY_DATABASE_URL=host=/tmp dbname=x", e4 = "SPILLWAY_AGENT_BOOTSTRAP_TOKEN=tok",
              e5 = "SPILLWAY_DATABASE_ACQUIRE_TIMEOUT=1m30s", e6 = "SPILLWAY_TEST_DSN=ignored", e7 = "PATH=/bin";
  char* env[] = {e1.data(), e2.data(), e3.data(), e4.data(), e5.data(), e6.data(), e7.data(), nullptr};
  const Config c = Config::Load(path, env);
  EXPECT_EQ(c.Int("server.io_threads"), 7);
  EXPECT_EQ(c.String("server.listen"), "127.0.0.1:2000");
  EXPECT_EQ(c.String("database.url"), "host=/tmp dbname=x");
  EXPECT_EQ(c.String("agent.bootstrap_token"), "tok");
  EXPECT_EQ(c.Duration("database.acquire_timeout"), Millis(90'000));
}

TEST(Config, UnknownKeyInEnvironmentIsRefusedByName) {
  std::string e1 = "SPILLWAY_SERVER_LISTNE=1.2.3.4:5";
  char* env[] = {e1.data(), nullptr};
  EXPECT_NE(Message([&] { Config::Load(std::nullopt, env); }).find("SPILLWAY_SERVER_LISTNE"), std::string::npos);
  std::string e2 = "SPILLWAY_DATABASE_POOL_SIZE=-1";
  char* env2[] = {e2.data(), nullptr};
  EXPECT_NE(Message([&] { Config::Load(std::nullopt, env2); }).find("database.pool_size"), std::string::npos);
}

TEST(Config, ParsesListenAddresses) {
  auto a = ParseHostPort("0.0.0.0:8080");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->host, "0.0.0.0");
  EXPECT_EQ(a->port, 8080);
  auto b = ParseHostPort("[::1]:9464");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "::1");
  EXPECT_FALSE(ParseHostPort("8080"));
  EXPECT_FALSE(ParseHostPort("host:99999"));
  EXPECT_FALSE(ParseHostPort(":80"));
  EXPECT_FALSE(ParseHostPort("::1:80"));
}
