#include "cli/cli.hpp"

#include <boost/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <set>
#include <thread>

#include "agent/http_client.hpp"
#include "cli/output.hpp"
#include "cli/profile.hpp"
#include "core/duration.hpp"
#include "core/ids.hpp"

namespace spillway::cli {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

// The API said no: its message and request id go to stderr, and the exit code is 1.
struct ApiFailure : std::runtime_error {
  ApiFailure(int status, std::string code, const std::string& message, std::string request_id)
      : std::runtime_error(message), status(status), code(std::move(code)), request_id(std::move(request_id)) {}
  int status;
  std::string code, request_id;
};

struct FlagSpec {
  std::string name;        // "--region"
  std::string value;       // "REGION"; empty for a switch (--wait)
  std::string help;
  bool repeat = false;     // may be given more than once (--ssh-key)
};

struct Invocation;
struct Command {
  std::string noun, verb;              // verb empty: the noun alone
  std::vector<std::string> args;       // positional arguments, by name
  std::vector<FlagSpec> flags;
  std::string summary;
  std::function<int(Invocation&)> run;
};

const std::vector<FlagSpec> kGlobalFlags = {
    {"--profile", "NAME", "the profile in ~/.config/spillway/config.toml (default: default, or SPILLWAY_PROFILE)"},
    {"--api", "URL", "the API's URL, such as http://127.0.0.1:8080 or https://api.example:8443 (or SPILLWAY_API)"},
    {"--ca-file", "PEM", "https: trust these CA certificates instead of the system's (or SPILLWAY_CA_FILE)"},
    {"--output", "FORMAT", "table | json | csv (table on a terminal, json when piped)"},
    {"--help", "", "this help"},
};

struct Invocation {
  Invocation(Io& io, const Command& command, std::vector<std::string> args,
             std::map<std::string, std::vector<std::string>> flags)
      : io(io), command(command), args(std::move(args)), flags(std::move(flags)) {}
  Io& io;
  const Command& command;
  std::vector<std::string> args;
  std::map<std::string, std::vector<std::string>> flags;
  Format format = Format::kJson;

  bool Has(const std::string& flag) const { return flags.count(flag) > 0; }
  std::string Flag(const std::string& flag, const std::string& fallback = "") const {
    const auto it = flags.find(flag);
    return it == flags.end() || it->second.empty() ? fallback : it->second.back();
  }
  std::string Required(const std::string& flag) const {
    const std::string v = Flag(flag);
    if (v.empty()) throw UsageError(command.noun + (command.verb.empty() ? "" : " " + command.verb) + " needs " + flag);
    return v;
  }
  const std::string& Arg(size_t i) const { return args.at(i); }
  // A required flag that is a whole number, all of it.
  std::int64_t RequiredInt(const std::string& flag) const {
    const std::string v = Required(flag);
    size_t used = 0;
    std::int64_t n = 0;
    try {
      n = std::stoll(v, &used);
    } catch (const std::logic_error&) {
    }
    if (used == 0 || used != v.size()) throw UsageError(flag + " must be a whole number (got " + v + ")");
    return n;
  }
  // Writes a downloaded body to `path`, or to stdout when it is "-".
  void Save(const std::string& body, const std::string& path) {
    if (path == "-") {
      io.out << body;
      return;
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << body;
    if (!out.flush()) throw UsageError("cannot write " + path);
    io.err << "wrote " << path << " (" << body.size() << " bytes)\n";
  }

  // GET `path` into `out_path` ("-": stdout) as it arrives: an export of any size passes through
  // without being held. A file is written beside its name and renamed once whole, so a download
  // cut off midway leaves no file that looks complete.
  void Download(const std::string& path, const std::string& out_path, const agent::HttpClient::Headers& headers = {}) {
    auto& c = Client();
    std::ofstream file;
    const std::string part = out_path + ".part";
    if (out_path != "-") {
      file.open(part, std::ios::binary | std::ios::trunc);
      if (!file) throw UsageError("cannot write " + part);
    }
    std::ostream& sink = out_path == "-" ? io.out : file;
    std::int64_t bytes = 0;
    agent::HttpClient::Result r;
    try {
      r = c.Download("GET", path, target_.api_key, 60s,
                     [&](std::string_view piece) {
                       sink.write(piece.data(), static_cast<std::streamsize>(piece.size()));
                       bytes += static_cast<std::int64_t>(piece.size());
                     },
                     headers);
    } catch (...) {
      if (out_path != "-") std::filesystem::remove(part);
      throw;
    }
    if (r.status >= 400 || out_path == "-") {
      if (out_path != "-") std::filesystem::remove(part);
      if (r.status >= 400) Fail(r);
      return;
    }
    if (!file.flush()) throw UsageError("cannot write " + part);
    file.close();
    std::filesystem::rename(part, out_path);
    io.err << "wrote " << out_path << " (" << bytes << " bytes)\n";
  }

  // The API, resolved on first use (configure and completion need none).
  agent::HttpClient& Client() {
    if (!client_) {
      target_ = Resolve(io.env, Flag("--profile"), Flag("--api"), Flag("--ca-file"));
      client_ = std::make_unique<agent::HttpClient>(target_.api_url, "spillway-cli/" SPILLWAY_VERSION, target_.ca_file);
    }
    return *client_;
  }
  agent::HttpClient::Result Raw(const std::string& method, const std::string& path, const std::string& body = "",
                         const agent::HttpClient::Headers& headers = {}) {
    auto& c = Client();
    agent::HttpClient::Result r = c.Call(method, path, target_.api_key, body, 60s, headers);
    if (r.status >= 400) Fail(r);
    return r;
  }
  // An error answer as the ApiFailure it says.
  [[noreturn]] static void Fail(const agent::HttpClient::Result& r) {
    std::string code = "http_" + std::to_string(r.status), message = r.body, request_id;
    try {
      const auto v = json::parse(r.body);
      const auto& e = v.at("error").as_object();
      code = std::string(e.at("code").as_string());
      message = std::string(e.at("message").as_string());
      if (const auto* id = e.if_contains("request_id"); id && id->is_string()) request_id = std::string(id->as_string());
    } catch (const std::exception&) {
    }
    throw ApiFailure(r.status, code, message, request_id);
  }
  json::value Call(const std::string& method, const std::string& path, const std::string& body = "",
                   const agent::HttpClient::Headers& headers = {}) {
    const auto r = Raw(method, path, body, headers);
    if (r.body.empty()) return nullptr;
    return json::parse(r.body);
  }
  // Every page of a list ({"data": [...], "next_cursor": ...}).
  json::array List(const std::string& path) {
    json::array all;
    std::string cursor;
    for (;;) {
      const std::string sep = path.find('?') == std::string::npos ? "?" : "&";
      const auto page = Call("GET", path + (cursor.empty() ? "" : sep + "cursor=" + cursor));
      for (const auto& row : page.at("data").as_array()) all.push_back(row);
      const auto* next = page.as_object().if_contains("next_cursor");
      if (!next || !next->is_string()) return all;
      cursor = std::string(next->as_string());
    }
  }

  void Rows(const json::array& rows, const std::vector<Column>& columns) {
    if (format == Format::kJson) io.out << json::serialize(json::object{{"data", rows}}) << "\n";
    else PrintRows(io.out, rows, columns, format);
  }
  void Object(const json::value& v) {
    if (format == Format::kJson) io.out << json::serialize(v) << "\n";
    else PrintObject(io.out, v.as_object(), format);
  }

 private:
  Target target_;
  std::unique_ptr<agent::HttpClient> client_;
};

// ?name=value&… from the flags given, percent-encoded.
std::string Query(const Invocation& inv, const std::vector<std::pair<std::string, std::string>>& flag_to_param) {
  std::string q;
  for (const auto& [flag, param] : flag_to_param) {
    const std::string v = inv.Flag(flag);
    if (v.empty()) continue;
    std::string enc;
    for (unsigned char c : v) {
      if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == ':') enc += static_cast<char>(c);
      else {
        char buf[4];
        std::snprintf(buf, sizeof buf, "%%%02X", c);
        enc += buf;
      }
    }
    q += (q.empty() ? "?" : "&") + param + "=" + enc;
  }
  return q;
}

std::string PathPart(const std::string& id) {
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'))
      throw UsageError("not an id: " + id);
  return id;
}

const std::vector<Column> kInstanceColumns = {{"ID", "id"},         {"NAME", "name"},     {"TYPE", "instance_type"},
                                              {"REGION", "region"}, {"MARKET", "market"}, {"STATE", "state"},
                                              {"HOST", "host_id"},  {"CREATED", "created_at"}};

// Polls an instance until it reaches `want` (or ends otherwise), with a progress line on a terminal.
int WaitFor(Invocation& inv, const std::string& id, const std::string& want) {
  const auto limit = ParseDuration(inv.Flag("--timeout", "600s"));
  if (!limit) throw UsageError("--timeout must be a duration such as 300s or 10m");
  const auto start = std::chrono::steady_clock::now();
  const bool progress = inv.io.err_is_terminal;
  for (;;) {
    const auto inst = inv.Call("GET", "/v1/instances/" + PathPart(id));
    const std::string state(inst.at("state").as_string());
    const auto secs = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start).count();
    if (progress) inv.io.err << "\r" << id << ": " << state << " (" << secs << " s)\033[K" << std::flush;
    const bool ended = state == "terminated" || state == "failed";
    if (state == want || ended) {
      if (progress) inv.io.err << "\n";
      inv.Object(inst);
      if (state == want) return 0;
      inv.io.err << "error: " << id << " ended " << state << " (" << Cell(inst, "end_reason") << ") before it was "
                 << want << "\n";
      return 1;
    }
    if (std::chrono::steady_clock::now() - start > *limit) {
      if (progress) inv.io.err << "\n";
      inv.io.err << "error: " << id << " still " << state << " after " << inv.Flag("--timeout", "600s") << "\n";
      return 1;
    }
    std::this_thread::sleep_for(1s);
  }
}

std::vector<Command> Commands();

// Execs ssh with the instance's endpoint (instances ssh, ssh).
int SshTo(Invocation& inv) {
  const auto i = inv.Call("GET", "/v1/instances/" + PathPart(inv.Arg(0)));
  const auto* ssh = i.as_object().if_contains("ssh");
  if (!ssh || !ssh->is_object()) {
    inv.io.err << "error: " << inv.Arg(0) << " has no SSH endpoint (state " << Cell(i, "state")
               << "; it needs an SSH key at launch and must be running)\n";
    return 1;
  }
  std::vector<std::string> argv = {"ssh", "-p", Cell(*ssh, "port")};
  if (inv.Has("--identity")) argv.insert(argv.end(), {"-i", inv.Flag("--identity")});
  argv.push_back(Cell(*ssh, "user") + "@" + Cell(*ssh, "host"));
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  inv.io.out.flush();
  ::execvp("ssh", cargv.data());
  inv.io.err << "error: cannot run ssh: " << std::strerror(errno) << "\n";
  return 1;
}

int Configure(Invocation& inv) {
  Profile p;
  p.name = inv.Flag("--profile", "default");
  const std::string path = ConfigPath(inv.io.env);
  if (auto existing = ReadProfile(path, p.name)) p = *existing;
  p.api_url = inv.Flag("--api", p.api_url);
  p.ca_file = inv.Flag("--ca-file", p.ca_file);
  if (p.api_url.empty()) throw UsageError("configure needs --api URL");
  if (inv.Has("--key")) {
    // The key goes to a file of its own beside the config (0600), which the profile names.
    const std::string key_path = std::filesystem::path(path).parent_path() / (p.name + ".key");
    std::filesystem::create_directories(std::filesystem::path(key_path).parent_path());
    const mode_t old = ::umask(077);
    std::ofstream out(key_path, std::ios::trunc);
    ::umask(old);
    out << inv.Flag("--key") << "\n";
    if (!out.flush()) throw UsageError("cannot write " + key_path);
    p.key_file = key_path;
  }
  if (inv.Has("--key-file")) p.key_file = std::filesystem::absolute(inv.Flag("--key-file"));
  if (p.key_file.empty()) throw UsageError("configure needs --key KEY or --key-file FILE");
  WriteProfile(path, p);
  inv.io.err << "profile " << p.name << " written to " << path << "\n";
  return 0;
}

std::string Completion(const std::string& shell) {
  std::set<std::string> nouns;
  std::map<std::string, std::set<std::string>> verbs;
  for (const auto& c : Commands()) {
    nouns.insert(c.noun);
    if (!c.verb.empty()) verbs[c.noun].insert(c.verb);
  }
  auto join = [](const std::set<std::string>& s) {
    std::string out;
    for (const auto& w : s) out += (out.empty() ? "" : " ") + w;
    return out;
  };
  std::string cases;
  for (const auto& [noun, vs] : verbs) cases += "    " + noun + ") COMPREPLY=($(compgen -W \"" + join(vs) + "\" -- \"$cur\")) ;;\n";
  std::string bash = "# bash completion for spillway (spillway completion bash)\n"
                     "_spillway() {\n"
                     "  local cur=${COMP_WORDS[COMP_CWORD]}\n"
                     "  if [ \"$COMP_CWORD\" -eq 1 ]; then COMPREPLY=($(compgen -W \"" +
                     join(nouns) +
                     "\" -- \"$cur\")); return; fi\n"
                     "  if [ \"$COMP_CWORD\" -eq 2 ]; then\n  case ${COMP_WORDS[1]} in\n" +
                     cases +
                     "  esac\n  fi\n"
                     "}\n"
                     "complete -F _spillway spillway\n";
  if (shell == "bash") return bash;
  if (shell == "zsh") return "#compdef spillway\n# zsh completion for spillway (spillway completion zsh)\n"
                             "autoload -U +X bashcompinit && bashcompinit\n" + bash;
  throw UsageError("completion takes bash or zsh");
}

// GET prefix + the id argument, shown as one object; DELETE the same, showing nothing.
std::function<int(Invocation&)> ShowOne(std::string prefix) {
  return [prefix](Invocation& inv) {
    inv.Object(inv.Call("GET", prefix + PathPart(inv.Arg(0))));
    return 0;
  };
}
std::function<int(Invocation&)> DeleteOne(std::string prefix) {
  return [prefix](Invocation& inv) {
    inv.Raw("DELETE", prefix + PathPart(inv.Arg(0)));
    return 0;
  };
}

std::vector<Command> Commands() {
  std::vector<Command> c;
  const FlagSpec wait{"--wait", "", "wait until it is done, with a progress line on a terminal"};
  const FlagSpec timeout{"--timeout", "DURATION", "how long --wait waits (default 600s)"};
  c.push_back({"configure", "", {}, {{"--key", "KEY", "the API key (kept in a 0600 file beside the config)"},
                                     {"--key-file", "FILE", "a file holding the API key"}},
               "write a profile (--profile NAME, --api URL) to ~/.config/spillway/config.toml (0600)", Configure});
  c.push_back({"completion", "", {"SHELL"}, {}, "print bash or zsh completion (source <(spillway completion bash))",
               [](Invocation& inv) {
                 inv.io.out << Completion(inv.Arg(0));
                 return 0;
               }});

  // Customers: instances and what they run on.
  c.push_back({"instances", "list", {}, {{"--state", "STATE", "only instances in this state"},
                                         {"--market", "MARKET", "on_demand or spot"},
                                         {"--tenant", "TENANT_ID", "operators and admins: one tenant's"}},
               "list instances",
               [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/instances" + Query(inv, {{"--state", "state"}, {"--market", "market"},
                                                                 {"--tenant", "tenant_id"}})),
                          kInstanceColumns);
                 return 0;
               }});
  c.push_back({"instances", "get", {"INSTANCE_ID"}, {}, "show one instance", ShowOne("/v1/instances/")});
  c.push_back({"instances", "launch", {}, {{"--type", "TYPE", "an instance type (spillway instance-types)"},
                                           {"--region", "REGION", "where"},
                                           {"--market", "MARKET", "on_demand (default) or spot"},
                                           {"--max-price", "USD", "spot: the most to pay per GPU-hour"},
                                           {"--name", "NAME", "a name of your own"},
                                           {"--image", "IMAGE", "the container image to run"},
                                           {"--ssh-key", "SSH_KEY_ID", "an SSH key to install (repeatable)", true},
                                           {"--volume", "VOLUME_ID:PATH", "a volume to mount (repeatable)", true},
                                           wait, timeout},
               "launch an instance",
               [](Invocation& inv) {
                 json::object body{{"instance_type", inv.Required("--type")},
                                   {"region", inv.Required("--region")},
                                   {"market", inv.Flag("--market", "on_demand")}};
                 if (inv.Has("--max-price")) body["max_price_per_gpu_hour"] = inv.Flag("--max-price");
                 if (inv.Has("--name")) body["name"] = inv.Flag("--name");
                 if (inv.Has("--image")) body["image"] = inv.Flag("--image");
                 if (inv.Has("--ssh-key")) {
                   json::array keys;
                   for (const auto& k : inv.flags["--ssh-key"]) keys.push_back(json::string(k));
                   body["ssh_key_ids"] = std::move(keys);
                 }
                 if (inv.Has("--volume")) {
                   json::array vols;
                   for (const auto& v : inv.flags["--volume"]) {
                     const auto colon = v.find(':');
                     if (colon == std::string::npos) throw UsageError("--volume takes VOLUME_ID:MOUNT_PATH");
                     vols.push_back(json::object{{"id", v.substr(0, colon)}, {"mount_path", v.substr(colon + 1)}});
                   }
                   body["volumes"] = std::move(vols);
                 }
                 // One key per launch: a retry after a lost answer launches nothing twice.
                 const auto created = inv.Call("POST", "/v1/instances", json::serialize(body),
                                               {{"Idempotency-Key", NewId("cli")}});
                 if (!inv.Has("--wait")) {
                   inv.Object(created);
                   return 0;
                 }
                 return WaitFor(inv, std::string(created.at("id").as_string()), "running");
               }});
  c.push_back({"instances", "terminate", {"INSTANCE_ID"}, {wait, timeout}, "terminate an instance",
               [](Invocation& inv) {
                 const auto r = inv.Call("DELETE", "/v1/instances/" + PathPart(inv.Arg(0)));
                 if (!inv.Has("--wait")) {
                   inv.Object(r);
                   return 0;
                 }
                 return WaitFor(inv, inv.Arg(0), "terminated");
               }});
  c.push_back({"instances", "wait", {"INSTANCE_ID"}, {{"--state", "STATE", "the state to wait for (default running)"},
                                                      timeout},
               "wait until an instance reaches a state",
               [](Invocation& inv) { return WaitFor(inv, inv.Arg(0), inv.Flag("--state", "running")); }});
  c.push_back({"instances", "ssh", {"INSTANCE_ID"}, {{"--identity", "FILE", "the private key (ssh -i)"}},
               "ssh to a running instance (execs ssh with its endpoint)", SshTo});
  c.push_back({"ssh", "", {"INSTANCE_ID"}, {{"--identity", "FILE", "the private key (ssh -i)"}},
               "the same as instances ssh", SshTo});
  c.push_back({"instance-types", "", {}, {}, "the catalog: types, list prices and availability per region",
               [](Invocation& inv) {
                 inv.Rows(inv.Call("GET", "/v1/instance-types").at("data").as_array(),
                          {{"NAME", "name"}, {"GPU_MODEL", "gpu_model"}, {"GPUS", "gpus"}, {"VCPUS", "vcpus"},
                           {"MEMORY_GIB", "memory_gib"}, {"ON_DEMAND_PER_GPU_HOUR", "on_demand_price_per_gpu_hour"}});
                 return 0;
               }});
  c.push_back({"spot-prices", "", {}, {{"--region", "REGION", "one region"}, {"--gpu-model", "MODEL", "one GPU model"},
                                       {"--watch", "", "print again every --interval (Ctrl-C stops)"},
                                       {"--interval", "DURATION", "with --watch (default 10s)"}},
               "the current spot price of each pool",
               [](Invocation& inv) {
                 const auto interval = ParseDuration(inv.Flag("--interval", "10s"));
                 if (!interval) throw UsageError("--interval must be a duration such as 10s");
                 for (;;) {
                   inv.Rows(inv.Call("GET", "/v1/spot-prices/latest" +
                                                Query(inv, {{"--region", "region"}, {"--gpu-model", "gpu_model"}}))
                                .at("data")
                                .as_array(),
                            {{"REGION", "region"}, {"GPU_MODEL", "gpu_model"}, {"PER_GPU_HOUR", "price_per_gpu_hour"},
                             {"ON_DEMAND", "on_demand_price_per_gpu_hour"}, {"SPARE", "spare_fraction"},
                             {"SINCE", "effective_from"}});
                   if (!inv.Has("--watch")) return 0;
                   inv.io.out.flush();
                   std::this_thread::sleep_for(*interval);
                 }
               }});
  c.push_back({"ssh-keys", "list", {}, {}, "your SSH keys", [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/ssh-keys"),
                          {{"ID", "id"}, {"NAME", "name"}, {"FINGERPRINT", "fingerprint"}, {"CREATED", "created_at"}});
                 return 0;
               }});
  c.push_back({"ssh-keys", "add", {}, {{"--name", "NAME", "its name"}, {"--public-key-file", "FILE", "an OpenSSH public key"}},
               "add an SSH key",
               [](Invocation& inv) {
                 std::string key = ReadText(inv.Required("--public-key-file"));
                 while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
                 inv.Object(inv.Call("POST", "/v1/ssh-keys",
                                     json::serialize(json::object{{"name", inv.Required("--name")}, {"public_key", key}})));
                 return 0;
               }});
  c.push_back({"ssh-keys", "delete", {"SSH_KEY_ID"}, {}, "delete an SSH key", DeleteOne("/v1/ssh-keys/")});
  c.push_back({"volumes", "list", {}, {}, "your volumes", [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/volumes"), {{"ID", "id"}, {"NAME", "name"}, {"REGION", "region"},
                                                    {"SIZE_GB", "size_gb"}, {"ATTACHED_TO", "attached_instance_id"}});
                 return 0;
               }});
  c.push_back({"volumes", "create", {}, {{"--name", "NAME", "its name"}, {"--region", "REGION", "where"},
                                         {"--size-gb", "GB", "its size"}},
               "create a volume",
               [](Invocation& inv) {
                 const std::int64_t gb = inv.RequiredInt("--size-gb");
                 inv.Object(inv.Call("POST", "/v1/volumes",
                                     json::serialize(json::object{{"name", inv.Required("--name")},
                                                                  {"region", inv.Required("--region")},
                                                                  {"size_gb", gb}})));
                 return 0;
               }});
  c.push_back({"volumes", "delete", {"VOLUME_ID"}, {}, "delete a volume", DeleteOne("/v1/volumes/")});
  c.push_back({"usage", "", {}, {{"--from", "TIME", "RFC 3339 (default: 24 hours ago)"}, {"--to", "TIME", "RFC 3339"},
                                 {"--granularity", "hour|day", "rows per hour or per day"},
                                 {"--tenant", "TENANT_ID", "finance, operators: one tenant's"}},
               "GPU-hours, utilisation and energy per instance and period",
               [](Invocation& inv) {
                 const auto u = inv.Call("GET", "/v1/usage" + Query(inv, {{"--from", "from"}, {"--to", "to"},
                                                                          {"--granularity", "granularity"},
                                                                          {"--tenant", "tenant_id"}}));
                 inv.Rows(u.at("data").as_array(),
                          {{"INSTANCE", "instance_id"}, {"PERIOD", "period_start"}, {"GPU_HOURS", "gpu_hours"},
                           {"MEAN_UTIL_PCT", "mean_util_pct"}, {"ENERGY_KWH", "energy_kwh"}, {"SAMPLES", "samples"}});
                 return 0;
               }});
  c.push_back({"invoices", "list", {}, {}, "your invoices", [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/invoices"), {{"ID", "id"}, {"PERIOD", "period"}, {"STATUS", "status"},
                                                     {"NUMBER", "number"}, {"TOTAL", "total"}, {"CURRENCY", "currency"}});
                 return 0;
               }});
  c.push_back({"invoices", "get", {"INVOICE_ID"}, {}, "one invoice, its lines included", ShowOne("/v1/invoices/")});
  c.push_back({"invoices", "download", {"INVOICE_ID"}, {{"--format", "pdf|csv", "what to download (default pdf)"},
                                                        {"--out", "FILE", "where to write it (default: INVOICE_ID.pdf|csv)"}},
               "download an invoice as PDF or CSV",
               [](Invocation& inv) {
                 const std::string format = inv.Flag("--format", "pdf");
                 if (format != "pdf" && format != "csv") throw UsageError("--format must be pdf or csv");
                 const auto r = inv.Raw("GET", "/v1/invoices/" + PathPart(inv.Arg(0)) + "?format=" + format);
                 inv.Save(r.body, inv.Flag("--out", inv.Arg(0) + "." + format));
                 return 0;
               }});

  // Operators.
  c.push_back({"capacity", "", {}, {}, "each pool: GPUs total, reserved, on-demand, spot, spare, prices",
               [](Invocation& inv) {
                 inv.Rows(inv.Call("GET", "/v1/capacity").at("data").as_array(),
                          {{"REGION", "region"}, {"GPU_MODEL", "gpu_model"}, {"HOSTS", "hosts"}, {"TOTAL", "total_gpus"},
                           {"RESERVED", "internal_reserved_gpus"}, {"ON_DEMAND", "on_demand_gpus"},
                           {"SPOT", "spot_gpus"}, {"SPARE", "spare_gpus"}, {"SPOT_PRICE", "spot_price_per_gpu_hour"}});
                 return 0;
               }});
  c.push_back({"hosts", "list", {}, {{"--region", "REGION", "one region"}}, "GPU hosts and their health",
               [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/hosts" + Query(inv, {{"--region", "region"}})),
                          {{"ID", "id"}, {"HOSTNAME", "hostname"}, {"REGION", "region"}, {"GPU_MODEL", "gpu_model"},
                           {"GPUS", "gpu_count"}, {"STATE", "state"}, {"HEALTH", "health"}, {"HEARTBEAT", "last_heartbeat"}});
                 return 0;
               }});
  c.push_back({"hosts", "get", {"HOST_ID"}, {}, "one host", ShowOne("/v1/hosts/")});

  c.push_back({"reservations", "list", {}, {}, "the operator's internal reservation in each pool", [](Invocation& inv) {
                 inv.Rows(inv.Call("GET", "/v1/capacity").at("data").as_array(),
                          {{"REGION", "region"}, {"GPU_MODEL", "gpu_model"}, {"TOTAL", "total_gpus"},
                           {"RESERVED", "internal_reserved_gpus"}, {"SPARE", "spare_gpus"}});
                 return 0;
               }});
  c.push_back({"reservations", "set", {"REGION", "GPU_MODEL"}, {{"--gpus", "N", "GPUs to hold for internal demand"}},
               "take GPUs back for internal demand (spot instances get notice)",
               [](Invocation& inv) {
                 const std::int64_t gpus = inv.RequiredInt("--gpus");
                 inv.Object(inv.Call("PUT", "/v1/capacity/pools/" + PathPart(inv.Arg(0)) + "/" + PathPart(inv.Arg(1)),
                                     json::serialize(json::object{{"internal_reserved_gpus", gpus}})));
                 return 0;
               }});

  // Finance.
  c.push_back({"billing", "prices", {}, {}, "the price book: past, current and scheduled prices", [](Invocation& inv) {
                 inv.Rows(inv.Call("GET", "/v1/billing/prices").at("data").as_array(),
                          {{"KIND", "kind"}, {"GPU_MODEL", "gpu_model"}, {"PER_GPU_HOUR", "price_per_gpu_hour"},
                           {"PER_GB_MONTH", "price_per_gb_month"}, {"EFFECTIVE_FROM", "effective_from"},
                           {"STATUS", "status"}});
                 return 0;
               }});
  c.push_back({"billing", "set-price", {}, {{"--gpu-model", "MODEL", "the GPU model (or --storage)"},
                                            {"--storage", "", "the storage price per GB-month"},
                                            {"--price", "USD", "per GPU-hour (or per GB-month)"},
                                            {"--effective-from", "TIME", "RFC 3339, in the future"}},
               "schedule a list price change",
               [](Invocation& inv) {
                 json::object body{{"effective_from", inv.Required("--effective-from")}};
                 if (inv.Has("--storage")) {
                   body["kind"] = "storage";
                   body["price_per_gb_month"] = inv.Required("--price");
                 } else {
                   body["kind"] = "gpu";
                   body["gpu_model"] = inv.Required("--gpu-model");
                   body["price_per_gpu_hour"] = inv.Required("--price");
                 }
                 inv.Object(inv.Call("POST", "/v1/billing/prices", json::serialize(body),
                                     {{"Idempotency-Key", NewId("cli")}}));
                 return 0;
               }});
  c.push_back({"billing", "invoices", {}, {{"--period", "YYYY-MM", "one month"}, {"--status", "STATUS", "draft or finalized"},
                                           {"--tenant", "TENANT_ID", "one tenant"}},
               "every tenant's invoices",
               [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/billing/invoices" + Query(inv, {{"--period", "period"}, {"--status", "status"},
                                                                        {"--tenant", "tenant_id"}})),
                          {{"ID", "id"}, {"TENANT", "tenant_id"}, {"PERIOD", "period"}, {"STATUS", "status"},
                           {"NUMBER", "number"}, {"TOTAL", "total"}, {"BALANCE", "balance"}});
                 return 0;
               }});
  c.push_back({"billing", "periods", {}, {}, "closed billing periods", [](Invocation& inv) {
                 inv.Rows(inv.Call("GET", "/v1/billing/periods").at("data").as_array(),
                          {{"PERIOD", "period"}, {"CLOSED_AT", "closed_at"}, {"INCOMPLETE", "incomplete"},
                           {"INVOICES", "invoices"}, {"CLOSED_BY", "closed_by"}});
                 return 0;
               }});
  c.push_back({"billing", "close", {"PERIOD"}, {}, "close a month now: number and finalize its invoices",
               [](Invocation& inv) {
                 inv.Object(inv.Call("POST", "/v1/billing/periods/" + PathPart(inv.Arg(0)) + "/close"));
                 return 0;
               }});
  c.push_back({"billing", "credit-note", {"INVOICE_ID"}, {{"--amount", "USD", "how much to credit"},
                                                          {"--reason", "TEXT", "why (printed on the note)"}},
               "credit part of a finalized invoice",
               [](Invocation& inv) {
                 inv.Object(inv.Call("POST", "/v1/billing/invoices/" + PathPart(inv.Arg(0)) + "/credit-notes",
                                     json::serialize(json::object{{"amount", inv.Required("--amount")},
                                                                  {"reason", inv.Required("--reason")}}),
                                     {{"Idempotency-Key", NewId("cli")}}));
                 return 0;
               }});
  c.push_back({"billing", "export", {"FORMAT"}, {{"--period", "YYYY-MM", "the month"},
                                                 {"--tenant", "TENANT_ID", "one tenant"},
                                                 {"--out", "FILE", "where to write it (default: stdout)"}},
               "the month's costs as FOCUS 1.2 CSV (FORMAT: focus)",
               [](Invocation& inv) {
                 if (inv.Arg(0) != "focus") throw UsageError("billing export takes focus");
                 inv.Download("/v1/billing/exports/focus" + Query(inv, {{"--period", "period"}, {"--tenant", "tenant_id"}}),
                              inv.Flag("--out", "-"));
                 return 0;
               }});
  c.push_back({"billing", "revenue", {}, {{"--period", "YYYY-MM", "the month"}},
               "the spare-capacity revenue report: revenue, spot discount, spare GPU-hours offered and sold",
               [](Invocation& inv) {
                 const std::string q = Query(inv, {{"--period", "period"}});
                 if (inv.format == Format::kCsv) {  // the API's own CSV, as finance imports it
                   inv.Download("/v1/billing/reports/revenue" + q, "-", {{"Accept", "text/csv"}});
                   return 0;
                 }
                 const auto report = inv.Call("GET", "/v1/billing/reports/revenue" + q);
                 if (inv.format == Format::kJson) {
                   inv.Object(report);
                   return 0;
                 }
                 inv.Rows(report.at("usage").as_array(),
                          {{"REGION", "region"}, {"GPU_MODEL", "gpu_model"}, {"MARKET", "market"},
                           {"GPU_HOURS_SOLD", "gpu_hours_sold"}, {"REVENUE", "revenue"}, {"LIST_VALUE", "list_value"},
                           {"SPOT_DISCOUNT", "spot_discount_given"}});
                 inv.io.out << "\n";
                 inv.Rows(report.at("spare").as_array(),
                          {{"REGION", "region"}, {"GPU_MODEL", "gpu_model"}, {"SPARE_OFFERED", "spare_gpu_hours_offered"},
                           {"SPARE_SOLD", "spare_gpu_hours_sold"}, {"SPARE_UNSOLD", "spare_gpu_hours_unsold"}});
                 inv.io.out << "\ntotals\n";
                 PrintObject(inv.io.out, report.at("totals").as_object(), Format::kTable);
                 return 0;
               }});

  // API keys (a member manages its own tenant's; an admin any tenant's).
  c.push_back({"keys", "list", {}, {{"--tenant", "TENANT_ID", "the tenant whose keys"}}, "API keys", [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/tenants/" + PathPart(inv.Required("--tenant")) + "/api-keys"),
                          {{"ID", "id"}, {"NAME", "name"}, {"ROLE", "role"}, {"CREATED", "created_at"},
                           {"LAST_USED", "last_used_at"}, {"REVOKED", "revoked_at"}});
                 return 0;
               }});
  c.push_back({"keys", "create", {}, {{"--tenant", "TENANT_ID", "the tenant"}, {"--role", "ROLE", "member, finance, operator or admin"},
                                      {"--name", "NAME", "what it is for"}},
               "create an API key (its secret is shown once)",
               [](Invocation& inv) {
                 json::object body{{"role", inv.Required("--role")}};
                 if (inv.Has("--name")) body["name"] = inv.Flag("--name");
                 inv.Object(inv.Call("POST", "/v1/tenants/" + PathPart(inv.Required("--tenant")) + "/api-keys",
                                     json::serialize(body)));
                 return 0;
               }});
  c.push_back({"keys", "revoke", {"KEY_ID"}, {{"--tenant", "TENANT_ID", "the tenant"}}, "revoke an API key",
               [](Invocation& inv) {
                 inv.Raw("DELETE", "/v1/tenants/" + PathPart(inv.Required("--tenant")) + "/api-keys/" + PathPart(inv.Arg(0)));
                 return 0;
               }});

  // Admins.
  c.push_back({"tenants", "list", {}, {}, "tenants", [](Invocation& inv) {
                 inv.Rows(inv.List("/v1/tenants"), {{"ID", "id"}, {"NAME", "name"}, {"STATUS", "status"},
                                                    {"GPU_QUOTA", "gpu_quota"}, {"CREATED", "created_at"}});
                 return 0;
               }});
  c.push_back({"tenants", "get", {"TENANT_ID"}, {}, "one tenant", ShowOne("/v1/tenants/")});
  return c;
}

std::string Name(const Command& c) { return c.verb.empty() ? c.noun : c.noun + " " + c.verb; }

void PrintFlags(std::ostream& out, const std::vector<FlagSpec>& flags) {
  for (const auto& f : flags) {
    const std::string left = f.name + (f.value.empty() ? "" : " " + f.value);
    out << "  " << left << std::string(left.size() < 26 ? 26 - left.size() : 1, ' ') << f.help << "\n";
  }
}

void Usage(std::ostream& out, const std::vector<Command>& commands) {
  out << "spillway: the Spillway GPU cloud from the command line\n\n"
         "usage: spillway [--profile NAME] [--api URL] [--output table|json|csv] COMMAND [ARGS] [FLAGS]\n\n"
         "commands:\n";
  for (const auto& c : commands) {
    std::string left = Name(c);
    for (const auto& a : c.args) left += " " + a;
    out << "  " << left << std::string(left.size() < 34 ? 34 - left.size() : 1, ' ') << c.summary << "\n";
  }
  out << "\nglobal flags:\n";
  PrintFlags(out, kGlobalFlags);
  out << "\nspillway COMMAND --help says more. Exit codes: 0 done, 1 the API refused or was not reached, 2 usage.\n";
}

void CommandHelp(std::ostream& out, const Command& c) {
  std::string line = "usage: spillway " + Name(c);
  for (const auto& a : c.args) line += " " + a;
  if (!c.flags.empty()) line += " [FLAGS]";
  out << line << "\n\n" << c.summary << "\n";
  if (!c.flags.empty()) {
    out << "\nflags:\n";
    PrintFlags(out, c.flags);
  }
  out << "\nglobal flags:\n";
  PrintFlags(out, kGlobalFlags);
}

}  // namespace

int Run(const std::vector<std::string>& argv, Io& io) {
  const std::vector<Command> commands = Commands();
  std::vector<std::string> words;
  std::map<std::string, std::vector<std::string>> flags;
  try {
    // Flags may come anywhere: --name value, --name=value, or a switch.
    for (size_t i = 0; i < argv.size(); ++i) {
      const std::string& a = argv[i];
      if (a == "-h") {
        flags["--help"];
        continue;
      }
      if (a.rfind("--", 0) != 0 || a == "--") {
        words.push_back(a);
        continue;
      }
      std::string name = a, value;
      const auto eq = a.find('=');
      if (eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
      }
      // Is it a switch? Look it up among every command's flags and the global ones.
      bool is_switch = false, known = false;
      auto consider = [&](const FlagSpec& f) {
        if (f.name != name) return;
        known = true;
        is_switch = is_switch || f.value.empty();
      };
      for (const auto& f : kGlobalFlags) consider(f);
      for (const auto& c : commands)
        for (const auto& f : c.flags) consider(f);
      if (!known) throw UsageError("unknown flag " + name);
      if (!is_switch && eq == std::string::npos) {
        if (i + 1 >= argv.size()) throw UsageError(name + " needs a value");
        value = argv[++i];
      }
      flags[name].push_back(value);
    }
    if (words.empty()) {
      Usage(flags.count("--help") ? io.out : io.err, commands);
      return flags.count("--help") ? 0 : 2;
    }
    const Command* command = nullptr;
    size_t used = 1;
    for (const auto& c : commands) {
      if (c.noun != words[0]) continue;
      if (c.verb.empty()) {
        command = &c;
        break;
      }
      if (words.size() > 1 && c.verb == words[1]) {
        command = &c;
        used = 2;
        break;
      }
    }
    if (!command) {
      bool noun_known = false;
      std::string verbs;
      for (const auto& c : commands)
        if (c.noun == words[0]) {
          noun_known = true;
          verbs += (verbs.empty() ? "" : "|") + c.verb;
        }
      if (noun_known && flags.count("--help")) {
        io.out << "usage: spillway " << words[0] << " " << verbs << " ...\n";
        return 0;
      }
      throw UsageError(noun_known ? words[0] + " takes one of: " + verbs : "unknown command " + words[0]);
    }
    if (flags.count("--help")) {
      CommandHelp(io.out, *command);
      return 0;
    }
    // Flags this command does not take are refused (a typo must not launch something else).
    for (const auto& [name, values] : flags) {
      bool ok = false;
      for (const auto& f : kGlobalFlags) ok = ok || f.name == name;
      for (const auto& f : command->flags) ok = ok || f.name == name;
      if (!ok) throw UsageError(Name(*command) + " does not take " + name);
      if (values.size() > 1) {
        bool repeat = false;
        for (const auto& f : command->flags) repeat = repeat || (f.name == name && f.repeat);
        if (!repeat) throw UsageError(name + " given more than once");
      }
    }
    std::vector<std::string> args(words.begin() + static_cast<long>(used), words.end());
    if (args.size() != command->args.size()) {
      std::string want;
      for (const auto& a : command->args) want += " " + a;
      throw UsageError("usage: spillway " + Name(*command) + want);
    }
    Invocation inv{io, *command, std::move(args), std::move(flags)};
    const std::string out = inv.Flag("--output");
    inv.format = !out.empty() ? ParseFormat(out) : io.out_is_terminal ? Format::kTable : Format::kJson;
    return command->run(inv);
  } catch (const UsageError& e) {
    io.err << "spillway: " << e.what() << "\n(spillway --help lists the commands)\n";
    return 2;
  } catch (const ApiFailure& e) {
    io.err << "error: " << e.what() << "\n  (" << e.code << ", HTTP " << e.status
           << (e.request_id.empty() ? "" : ", request id " + e.request_id) << ")\n";
    return 1;
  } catch (const agent::HttpError& e) {
    io.err << "error: the API could not be reached: " << e.what() << "\n";
    return 1;
  } catch (const std::invalid_argument& e) {  // a URL the client refused
    io.err << "spillway: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    io.err << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace spillway::cli
