#include "cli/profile.hpp"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

namespace spillway::cli {
namespace {

std::string Get(const std::map<std::string, std::string>& env, const std::string& name) {
  const auto it = env.find(name);
  return it == env.end() ? "" : it->second;
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  return s.substr(i);
}

// [default] or [profile NAME], as the AWS CLI's config file names them.
std::string SectionOf(const std::string& name) { return name == "default" ? "default" : "profile " + name; }

toml::table Load(const std::string& path) {
  if (!std::filesystem::exists(path)) return {};
  try {
    return toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw UsageError(path + ": not valid TOML: " + std::string(e.description()));
  }
}

}  // namespace

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string ConfigPath(const std::map<std::string, std::string>& env) {
  if (const std::string xdg = Get(env, "XDG_CONFIG_HOME"); !xdg.empty()) return xdg + "/spillway/config.toml";
  const std::string home = Get(env, "HOME");
  if (home.empty()) throw UsageError("neither HOME nor XDG_CONFIG_HOME is set: cannot find the config file");
  return home + "/.config/spillway/config.toml";
}

std::optional<Profile> ReadProfile(const std::string& path, const std::string& name) {
  const toml::table t = Load(path);
  const toml::table* section = t[SectionOf(name)].as_table();
  if (!section) return std::nullopt;
  Profile p;
  p.name = name;
  p.api_url = (*section)["api_url"].value_or(std::string());
  p.key_file = (*section)["key_file"].value_or(std::string());
  p.ca_file = (*section)["ca_file"].value_or(std::string());
  return p;
}

void WriteProfile(const std::string& path, const Profile& profile) {
  toml::table t = Load(path);
  toml::table section;
  section.insert_or_assign("api_url", profile.api_url);
  section.insert_or_assign("key_file", profile.key_file);
  if (!profile.ca_file.empty()) section.insert_or_assign("ca_file", profile.ca_file);
  t.insert_or_assign(SectionOf(profile.name), std::move(section));
  const std::filesystem::path file(path);
  std::filesystem::create_directories(file.parent_path());
  ::chmod(file.parent_path().c_str(), 0700);
  const std::string tmp = path + ".tmp";
  {
    const mode_t old = ::umask(077);
    std::ofstream out(tmp, std::ios::trunc);
    ::umask(old);
    if (!out) throw UsageError("cannot write " + tmp);
    out << "# spillway CLI profiles (spillway configure). Keys live in key_file, never here.\n" << t << "\n";
    if (!out.flush()) throw UsageError("cannot write " + tmp);
  }
  ::chmod(tmp.c_str(), 0600);
  std::filesystem::rename(tmp, file);
}

Target Resolve(const std::map<std::string, std::string>& env, const std::string& profile_flag,
               const std::string& api_flag, const std::string& ca_flag) {
  const std::string name = !profile_flag.empty() ? profile_flag
                           : !Get(env, "SPILLWAY_PROFILE").empty() ? Get(env, "SPILLWAY_PROFILE")
                                                                   : "default";
  std::optional<Profile> p;
  const std::string path = ConfigPath(env);
  p = ReadProfile(path, name);
  if (!p && !profile_flag.empty())
    throw UsageError("no profile " + name + " in " + path + " (run: spillway configure --profile " + name + ")");
  Target t;
  // The flag, else the environment variable, else the profile's value.
  const auto pick = [&](const std::string& flag, const char* var, std::string Profile::*field) {
    return !flag.empty() ? flag : !Get(env, var).empty() ? Get(env, var) : p ? (*p).*field : std::string();
  };
  t.api_url = pick(api_flag, "SPILLWAY_API", &Profile::api_url);
  t.api_key = Get(env, "SPILLWAY_API_KEY");
  t.ca_file = pick(ca_flag, "SPILLWAY_CA_FILE", &Profile::ca_file);
  if (t.api_key.empty() && p && !p->key_file.empty()) {
    if (!std::ifstream(p->key_file)) throw UsageError("profile " + name + ": cannot read key_file " + p->key_file);
    t.api_key = Trimmed(ReadText(p->key_file));
  }
  if (t.api_url.empty())
    throw UsageError("no API URL: pass --api, set SPILLWAY_API, or run spillway configure");
  while (!t.api_url.empty() && t.api_url.back() == '/') t.api_url.pop_back();
  return t;
}

}  // namespace spillway::cli
