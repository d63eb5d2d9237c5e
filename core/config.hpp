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
  // kString: further check; returns why the value is bad, or "" when it is fine.
  std::string (*check)(const std::string&) = nullptr;
};

// The catalog: instance types and on-demand list prices, from [[instance_types]] and
// [[on_demand_prices]] in the config file (config/spillway.toml holds the defaults).
struct InstanceType {
  std::string name;       // "h100.8x"
  std::string gpu_model;  // "H100-80GB"
  std::int64_t gpus = 0, vcpus = 0, memory_gib = 0;
};
struct OnDemandPrice {
  std::string gpu_model;
  std::int64_t micros_per_gpu_hour = 0;
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

  const std::vector<InstanceType>& instance_types() const { return instance_types_; }
  const std::vector<OnDemandPrice>& on_demand_prices() const { return prices_; }
  const InstanceType* FindInstanceType(const std::string& name) const;
  std::optional<std::int64_t> OnDemandMicros(const std::string& gpu_model) const;

 private:
  const Value& Get(const std::string& key) const;
  void LoadTable(const void* toml_table, const std::string& origin);
  std::map<std::string, Value> values_;
  std::vector<InstanceType> instance_types_;
  std::vector<OnDemandPrice> prices_;
};

// config/spillway.toml as compiled into the binary: the defaults, catalog included.
const std::string& DefaultConfigText();

struct HostPort {
  std::string host;
  std::uint16_t port;
};
// "0.0.0.0:8080", "[::1]:8080", "localhost:9464".
std::optional<HostPort> ParseHostPort(const std::string& text);

}  // namespace spillway
