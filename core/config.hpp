#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "core/duration.hpp"

namespace spillway {

// A bad config file, key or value; the message names the key. Start-up exits 2 on it.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class KeyType { kString, kInt, kBool, kDuration };

struct KeySpec {
  std::string name;           // "section.key"
  KeyType type;
  std::string default_value;  // as written in spillway.toml
  std::int64_t min = 0, max = 0;                 // kInt bounds (inclusive) when min < max
  std::vector<std::string> one_of = {};          // kString: allowed values when non-empty
  bool listen_address = false;                   // kString: must be host:port
};

// Every key Spillway reads. config/spillway.toml documents each; a unit test keeps them in step.
const std::vector<KeySpec>& ConfigSchema();

class Config {
 public:
  using Value = std::variant<std::string, std::int64_t, bool, Millis>;

  // Defaults, then FILE (when given), then SPILLWAY_* environment variables from envp.
  static Config Load(const std::optional<std::string>& file, char** envp);
  static Config Defaults();

  const std::string& String(const std::string& key) const;
  std::int64_t Int(const std::string& key) const;
  bool Bool(const std::string& key) const;
  Millis Duration(const std::string& key) const;

  // Sets KEY from its textual form (as in the environment), validating it.
  void Set(const std::string& key, const std::string& text, const std::string& origin);

 private:
  const Value& Get(const std::string& key) const;
  std::map<std::string, Value> values_;
};

struct HostPort {
  std::string host;
  std::uint16_t port;
};
// "0.0.0.0:8080", "[::1]:8080", "localhost:9464".
std::optional<HostPort> ParseHostPort(const std::string& text);

}  // namespace spillway
