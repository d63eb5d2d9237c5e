// spillway-apiserver [--config FILE] migrate|serve|bootstrap-admin|rotate-secrets|new-secret-key|verify-invoices
#include <ctime>
#include <iostream>
#include <optional>
#include <string>

#include "apiserver/serve.hpp"
#include "core/config.hpp"
#include "core/secrets.hpp"
#include "provisioning/fleet.hpp"
#include "core/log.hpp"

extern char** environ;

namespace {
constexpr const char* kUsage =
    "usage: spillway-apiserver [--config FILE] <command>\n"
    "commands:\n"
    "  migrate          apply the database migrations, then exit\n"
    "  serve            serve the API and admin listeners and run the controllers\n"
    "  bootstrap-admin  print a new admin API key (creating the operator tenant if missing)\n"
    "  rotate-secrets   seal every env value again under the newest key of secrets.key_file\n"
    "  new-secret-key [ID]  print a new key line for secrets.key_file (ID defaults to the date)\n"
    "  verify-invoices --period YYYY-MM  recompute every invoice of the month from stored usage and the\n"
    "                   price history, print each mismatch (exit 1 on any)\n";
}

int main(int argc, char** argv) {
  std::optional<std::string> config_file;
  std::string command, key_id, period;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      config_file = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_file = arg.substr(9);
    } else if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (command.empty() && arg[0] != '-') {
      command = arg;
    } else if (command == "verify-invoices" && arg == "--period" && i + 1 < argc) {
      period = argv[++i];
    } else if (command == "verify-invoices" && arg.rfind("--period=", 0) == 0) {
      period = arg.substr(9);
    } else if (command == "new-secret-key" && key_id.empty() && arg[0] != '-') {
      key_id = arg;
    } else {
      std::cerr << "spillway-apiserver: unexpected argument " << arg << "\n" << kUsage;
      return 2;
    }
  }
  if (command == "new-secret-key") {
    try {
      if (key_id.empty()) {
        char day[16];
        const std::time_t t = std::time(nullptr);
        std::strftime(day, sizeof day, "k%Y%m%d", std::gmtime(&t));
        key_id = day;
      }
      std::cout << spillway::SecretBox::NewKeyLine(key_id);
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "spillway-apiserver new-secret-key: " << e.what() << "\n";
      return 2;
    }
  }
  if (command == "verify-invoices" && period.empty()) {
    std::cerr << "spillway-apiserver verify-invoices: --period YYYY-MM is required\n" << kUsage;
    return 2;
  }
  if (command != "migrate" && command != "serve" && command != "bootstrap-admin" && command != "rotate-secrets" &&
      command != "verify-invoices") {
    std::cerr << (command.empty() ? "spillway-apiserver: no command given\n"
                                  : "spillway-apiserver: unknown command " + command + "\n")
              << kUsage;
    return 2;
  }
  try {
    const auto config = spillway::Config::Load(config_file, environ);
    spillway::FleetSettings::From(config);  // checks what the schema alone cannot (the discount curve)
    spillway::log::Init(config.String("log.level"));
    if (command == "migrate") return spillway::RunMigrate(config);
    if (command == "bootstrap-admin") return spillway::RunBootstrapAdmin(config);
    if (command == "rotate-secrets") return spillway::RunRotateSecrets(config);
    if (command == "verify-invoices") return spillway::RunVerifyInvoices(config, period);
    return spillway::RunServe(config);
  } catch (const spillway::ConfigError& e) {
    std::cerr << "spillway-apiserver: config: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "spillway-apiserver: " << e.what() << "\n";
    return 1;
  }
}
