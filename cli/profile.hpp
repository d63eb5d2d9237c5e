#pragma once
// Where the `spillway` CLI sends its calls and with which key, as the AWS CLI resolves it:
// --api / --profile on the command line, then SPILLWAY_API / SPILLWAY_API_KEY, then the profile in
// ~/.config/spillway/config.toml ([default], [profile NAME]: api_url, key_file, ca_file).
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

namespace spillway::cli {

struct UsageError : std::runtime_error {  // exit code 2
  using std::runtime_error::runtime_error;
};

// A file's whole text; a UsageError naming it when it cannot be read.
std::string ReadText(const std::string& path);

struct Profile {
  std::string name = "default";
  std::string api_url;   // "http://host:port"
  std::string key_file;  // where the API key is kept (never the key itself)
  std::string ca_file;   // https: the CA certificates (PEM) to trust instead of the system's
};

// $XDG_CONFIG_HOME/spillway/config.toml, or ~/.config/spillway/config.toml.
std::string ConfigPath(const std::map<std::string, std::string>& env);

// The named profile from the config file; nullopt when the file or the profile is absent. A file that
// does not parse is a UsageError naming it.
std::optional<Profile> ReadProfile(const std::string& path, const std::string& name);

// Writes (adds or replaces) one profile, keeping the others; the file is created 0600, its folder 0700.
void WriteProfile(const std::string& path, const Profile& profile);

struct Target {
  std::string api_url, api_key, ca_file;
};
// Resolves where to call and with which key (and, for https, which CAs: --ca-file, SPILLWAY_CA_FILE,
// the profile's ca_file, else the system's); a UsageError says what is missing and how to set it.
Target Resolve(const std::map<std::string, std::string>& env, const std::string& profile_flag,
               const std::string& api_flag, const std::string& ca_flag = "");

}  // namespace spillway::cli
