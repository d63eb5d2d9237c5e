#include "core/config.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <toml++/toml.h>

#include "core/money.hpp"

namespace spillway {
namespace {

// Environment names that do not follow SPILLWAY_<SECTION>_<KEY>, fixed by ARCHITECTURE.md.
const std::map<std::string, std::string>& EnvAliases() {
  static const std::map<std::string, std::string> kAliases = {
      {"SPILLWAY_DATABASE_URL", "database.url"},
      {"SPILLWAY_LISTEN", "server.listen"},
      {"SPILLWAY_ADMIN_LISTEN", "server.admin_listen"},
      {"SPILLWAY_AGENT_BOOTSTRAP_TOKEN", "agent.bootstrap_token"},
  };
  return kAliases;
}

const KeySpec* FindSpec(const std::string& name) {
  for (const auto& s : ConfigSchema())
    if (s.name == name) return &s;
  return nullptr;
}

bool KnownSection(const std::string& section) {
  for (const auto& s : ConfigSchema())
    if (s.name.compare(0, section.size() + 1, section + ".") == 0) return true;
  return false;
}

Config::Value ParseValue(const KeySpec& spec, const std::string& text, const std::string& origin) {
  auto bad = [&](const std::string& why) {
    return ConfigError(origin + ": " + spec.name + " = \"" + text + "\": " + why);
  };
  switch (spec.type) {
    case KeyType::kString:
      if (!spec.one_of.empty() &&
          std::find(spec.one_of.begin(), spec.one_of.end(), text) == spec.one_of.end()) {
        std::string allowed;
        for (const auto& v : spec.one_of) allowed += (allowed.empty() ? "" : ", ") + v;
        throw bad("must be one of " + allowed);
      }
      if (spec.listen_address && !ParseHostPort(text)) throw bad("must be HOST:PORT");
      if (spec.check) {
        if (const std::string why = spec.check(text); !why.empty()) throw bad(why);
      }
      return text;
    case KeyType::kInt: {
      std::int64_t v = 0;
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || p != text.data() + text.size()) throw bad("must be an integer");
      if (spec.min < spec.max && (v < spec.min || v > spec.max))
        throw bad("must be between " + std::to_string(spec.min) + " and " + std::to_string(spec.max));
      return v;
    }
    case KeyType::kBool:
      if (text == "true") return true;
      if (text == "false") return false;
      throw bad("must be true or false");
    case KeyType::kDuration: {
      auto d = ParseDuration(text);
      if (!d) throw bad("must be a duration such as 500ms, 10s, 2m or 1h");
      return *d;
    }
  }
  throw bad("unsupported type");
}

std::string CheckMoney(const std::string& text) {
  return ParseMicros(text) ? "" : "must be a decimal USD amount such as \"0.100000\"";
}

std::string CheckPositiveMoney(const std::string& text) {
  const auto micros = ParseMicros(text);
  return micros && *micros > 0 ? "" : "must be a positive decimal USD amount such as \"0.100000\"";
}

}  // namespace

const std::vector<KeySpec>& ConfigSchema() {
  static const std::vector<KeySpec> kSchema = {
      {"server.listen", KeyType::kString, "0.0.0.0:8080", 0, 0, {}, true},
      {"server.admin_listen", KeyType::kString, "127.0.0.1:9464", 0, 0, {}, true},
      {"server.io_threads", KeyType::kInt, "2", 1, 256},
      {"server.max_body_bytes", KeyType::kInt, "1048576", 1024, 1LL << 30},
      {"server.header_timeout", KeyType::kDuration, "10s"},
      {"server.body_timeout", KeyType::kDuration, "30s"},
      {"server.idle_timeout", KeyType::kDuration, "60s"},
      {"server.shutdown_timeout", KeyType::kDuration, "20s"},
      {"tls.enabled", KeyType::kBool, "false"},
      {"tls.listen", KeyType::kString, "0.0.0.0:8443", 0, 0, {}, true},
      {"tls.cert_file", KeyType::kString, ""},
      {"tls.key_file", KeyType::kString, ""},
      {"database.url", KeyType::kString, "postgresql:///spillway"},
      {"database.pool_size", KeyType::kInt, "8", 1, 512},
      {"database.max_queue", KeyType::kInt, "1024", 1, 1 << 20},
      {"database.acquire_timeout", KeyType::kDuration, "2s"},
      {"database.connect_timeout", KeyType::kDuration, "3s"},
      {"database.statement_timeout", KeyType::kDuration, "30s"},
      {"database.retry_after", KeyType::kDuration, "1s"},
      {"database.inline_connections", KeyType::kInt, "2", 0, 256},
      {"database.async_connections", KeyType::kInt, "4", 0, 256},
      {"database.inline_statement_timeout", KeyType::kDuration, "2s"},
      {"agent.bootstrap_token", KeyType::kString, ""},
      {"agent.heartbeat_interval", KeyType::kDuration, "5s"},
      {"agent.sample_interval", KeyType::kDuration, "10s"},
      {"fleet.heartbeat_timeout", KeyType::kDuration, "30s"},
      {"fleet.instance_report_grace", KeyType::kDuration, "60s"},
      {"fleet.assignment_wait_max", KeyType::kDuration, "60s"},
      {"fleet.heartbeat_flush_interval", KeyType::kDuration, "250ms"},
      {"fleet.silence_brake_percent", KeyType::kInt, "50", 1, 100},
      {"fleet.silence_brake_min_hosts", KeyType::kInt, "3", 1, 1'000'000},
      {"spot.reprice_interval", KeyType::kDuration, "30s"},
      {"spot.preemption_notice", KeyType::kDuration, "120s"},
      // Checked by the apiserver at start-up (billing/spot_curve.hpp), which names the key too.
      {"spot.discount_curve", KeyType::kString, "0:10,20:10,80:70,100:70"},
      {"spot.smoothing_percent", KeyType::kInt, "50", 1, 100},
      {"spot.floor", KeyType::kString, "0.100000", 0, 0, {}, false, CheckMoney},
      {"metering.clock_skew_tolerance", KeyType::kDuration, "5s"},
      {"metering.max_sample_age", KeyType::kDuration, "168h"},
      {"metering.ingest_queue", KeyType::kInt, "512", 1, 1 << 20},
      {"metering.group_max_samples", KeyType::kInt, "50000", 1, 10'000'000},
      {"metering.ingest_committers", KeyType::kInt, "2", 1, 64},
      {"metering.partitions_ahead", KeyType::kInt, "3", 1, 60},
      {"metering.rollup_interval", KeyType::kDuration, "30s"},
      {"metering.retention", KeyType::kDuration, "2160h"},
      {"controllers.tick", KeyType::kDuration, "1s"},
      {"idempotency.ttl", KeyType::kDuration, "24h"},
      {"tenants.suspension_grace", KeyType::kDuration, "24h"},
      {"secrets.key_file", KeyType::kString, ""},
      {"billing.storage_price_per_gb_month", KeyType::kString, "0.100000", 0, 0, {}, false, CheckPositiveMoney},
      {"billing.close_max_wait", KeyType::kDuration, "24h"},
      {"billing.issuer_name", KeyType::kString, "Spillway GPU Cloud"},
      {"billing.issuer_address", KeyType::kString, ""},
      {"billing.issuer_tax_id", KeyType::kString, ""},
      {"billing.issuer_email", KeyType::kString, ""},
      {"billing.low_balance_runway", KeyType::kDuration, "24h"},
      {"billing.min_launch_runway", KeyType::kDuration, "1h"},
      {"billing.unmetered_held_time", KeyType::kString, "forgive", 0, 0, {"forgive", "bill"}},
      {"webhooks.http_hosts", KeyType::kString, ""},
      {"webhooks.timeout", KeyType::kDuration, "5s"},
      {"webhooks.retry_base", KeyType::kDuration, "10s"},
      {"webhooks.retry_max", KeyType::kDuration, "1h"},
      {"webhooks.max_attempts", KeyType::kInt, "25", 1, 1000},
      {"webhooks.ca_file", KeyType::kString, ""},
      {"auth.key_cache_ttl", KeyType::kDuration, "60s"},
      {"console.session_ttl", KeyType::kDuration, "12h"},
      {"ratelimit.enabled", KeyType::kBool, "true"},
      {"ratelimit.key_rate", KeyType::kInt, "100", 0, 1'000'000},
      {"ratelimit.key_burst", KeyType::kInt, "200", 0, 1'000'000},
      {"ratelimit.tenant_rate", KeyType::kInt, "200", 0, 1'000'000},
      {"ratelimit.tenant_burst", KeyType::kInt, "400", 0, 1'000'000},
      {"operator.tenant_name", KeyType::kString, "operator"},
      {"log.level", KeyType::kString, "info", 0, 0, {"trace", "debug", "info", "warn", "error"}},
  };
  return kSchema;
}

Config Config::Defaults() {
  Config c;
  for (const auto& s : ConfigSchema()) c.values_[s.name] = ParseValue(s, s.default_value, "default");
  toml::table root;
  try {
    root = toml::parse(DefaultConfigText());
  } catch (const toml::parse_error& e) {
    throw std::logic_error("the built-in config/spillway.toml does not parse: " + std::string(e.description()));
  }
  c.LoadTable(&root, "built-in config/spillway.toml");
  return c;
}

const InstanceType* Config::FindInstanceType(const std::string& name) const {
  for (const auto& t : instance_types_)
    if (t.name == name) return &t;
  return nullptr;
}

std::optional<std::int64_t> Config::OnDemandMicros(const std::string& gpu_model) const {
  for (const auto& p : prices_)
    if (p.gpu_model == gpu_model) return p.micros_per_gpu_hour;
  return std::nullopt;
}

void Config::Set(const std::string& key, const std::string& text, const std::string& origin) {
  const KeySpec* spec = FindSpec(key);
  if (!spec) throw ConfigError(origin + ": unknown config key " + key);
  values_[key] = ParseValue(*spec, text, origin);
}

Config Config::Load(const std::optional<std::string>& file, char** envp) {
  Config c = Defaults();
  if (file) {
    toml::table root;
    try {
      root = toml::parse_file(*file);
    } catch (const toml::parse_error& e) {
      throw ConfigError(*file + ":" + std::to_string(e.source().begin.line) + ": " +
                        std::string(e.description()));
    }
    c.LoadTable(&root, *file);
  }
  for (char** e = envp; e && *e; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (!eq) continue;
    const std::string var(static_cast<const char*>(*e), eq);
    const std::string text(eq + 1);
    if (var.rfind("SPILLWAY_", 0) != 0) continue;
    if (auto it = EnvAliases().find(var); it != EnvAliases().end()) {
      c.Set(it->second, text, "environment " + var);
      continue;
    }
    // SPILLWAY_<SECTION>_<KEY>: only variables naming a known section are config; others
    // (SPILLWAY_TEST_DSN, SPILLWAY_CONFIG, ...) belong to other tools.
    std::string rest = var.substr(9);
    std::transform(rest.begin(), rest.end(), rest.begin(), [](unsigned char ch) { return std::tolower(ch); });
    const auto us = rest.find('_');
    if (us == std::string::npos) continue;
    const std::string section = rest.substr(0, us);
    if (!KnownSection(section)) continue;
    c.Set(section + "." + rest.substr(us + 1), text, "environment " + var);
  }
  return c;
}

void Config::LoadTable(const void* table_ptr, const std::string& origin) {
  const auto& root = *static_cast<const toml::table*>(table_ptr);
  auto int_field = [&](const toml::table& t, const std::string& where, const char* key, std::int64_t min,
                       std::int64_t max) {
    const auto v = t[key].value<std::int64_t>();
    if (!v || *v < min || *v > max)
      throw ConfigError(origin + ": " + where + "." + key + " must be an integer from " + std::to_string(min) +
                        " to " + std::to_string(max));
    return *v;
  };
  auto str_field = [&](const toml::table& t, const std::string& where, const char* key) {
    const auto v = t[key].value<std::string>();
    if (!v || v->empty()) throw ConfigError(origin + ": " + where + "." + key + " must be a non-empty string");
    return *v;
  };
  auto check_keys = [&](const toml::table& t, const std::string& where, std::initializer_list<const char*> known) {
    for (const auto& [k, v] : t) {
      bool ok = false;
      for (const char* n : known) ok |= (k.str() == n);
      if (!ok) throw ConfigError(origin + ": unknown config key " + where + "." + std::string(k.str()));
    }
  };
  for (const auto& [section, node] : root) {
    const std::string sec(section.str());
    if (sec == "instance_types" || sec == "on_demand_prices") {
      const auto* arr = node.as_array();
      if (!arr) throw ConfigError(origin + ": " + sec + " must be an array of tables ([[" + sec + "]])");
      if (sec == "instance_types") instance_types_.clear();
      else prices_.clear();
      for (size_t i = 0; i < arr->size(); ++i) {
        const auto* t = arr->get(i)->as_table();
        const std::string where = sec + "[" + std::to_string(i) + "]";
        if (!t) throw ConfigError(origin + ": " + where + " must be a table");
        if (sec == "instance_types") {
          check_keys(*t, where, {"name", "gpu_model", "gpus", "vcpus", "memory_gib"});
          InstanceType it{str_field(*t, where, "name"), str_field(*t, where, "gpu_model"),
                          int_field(*t, where, "gpus", 1, 64), int_field(*t, where, "vcpus", 1, 4096),
                          int_field(*t, where, "memory_gib", 1, 65536)};
          if (FindInstanceType(it.name)) throw ConfigError(origin + ": instance type " + it.name + " is defined twice");
          instance_types_.push_back(it);
        } else {
          check_keys(*t, where, {"gpu_model", "price_per_gpu_hour"});
          const std::string model = str_field(*t, where, "gpu_model");
          const auto micros = ParseMicros(str_field(*t, where, "price_per_gpu_hour"));
          if (!micros || *micros <= 0)
            throw ConfigError(origin + ": " + where + ".price_per_gpu_hour must be a positive USD amount such as \"2.490000\"");
          if (OnDemandMicros(model)) throw ConfigError(origin + ": the price of " + model + " is defined twice");
          prices_.push_back({model, *micros});
        }
      }
      continue;
    }
    const auto* table = node.as_table();
    if (!table) throw ConfigError(origin + ": unknown config key " + sec + " (expected a [section])");
    for (const auto& [k, v] : *table) {
      const std::string name = sec + "." + std::string(k.str());
      const KeySpec* spec = FindSpec(name);
      if (!spec) throw ConfigError(origin + ": unknown config key " + name);
      std::string text;
      if (auto str = v.value<std::string>(); str && v.is_string() &&
          (spec->type == KeyType::kString || spec->type == KeyType::kDuration)) {
        text = *str;
      } else if (v.is_integer() && spec->type == KeyType::kInt) {
        text = std::to_string(*v.value<std::int64_t>());
      } else if (v.is_boolean() && spec->type == KeyType::kBool) {
        text = *v.value<bool>() ? "true" : "false";
      } else {
        static const char* kNames[] = {"a string", "an integer", "true or false",
                                       "a duration string such as \"10s\""};
        throw ConfigError(origin + ": " + name + " must be " + kNames[static_cast<int>(spec->type)]);
      }
      values_[name] = ParseValue(*spec, text, origin);
    }
  }
  for (const auto& t : instance_types_)
    if (!OnDemandMicros(t.gpu_model))
      throw ConfigError(origin + ": instance type " + t.name + " uses " + t.gpu_model +
                        ", which has no [[on_demand_prices]] entry");
}

const Config::Value& Config::Get(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw std::logic_error("config key not in schema: " + key);
  return it->second;
}
const std::string& Config::String(const std::string& key) const { return std::get<std::string>(Get(key)); }
std::int64_t Config::Int(const std::string& key) const { return std::get<std::int64_t>(Get(key)); }
bool Config::Bool(const std::string& key) const { return std::get<bool>(Get(key)); }
Millis Config::Duration(const std::string& key) const { return std::get<Millis>(Get(key)); }

std::optional<HostPort> ParseHostPort(const std::string& text) {
  std::string host, port;
  if (!text.empty() && text[0] == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (host.empty() || port.empty()) return std::nullopt;
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || ptr != port.data() + port.size() || p > 65535) return std::nullopt;
  return HostPort{host, static_cast<std::uint16_t>(p)};
}

}  // namespace spillway
