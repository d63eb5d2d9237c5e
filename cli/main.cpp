// spillway: the customers', finance's and operators' command line (cli/cli.hpp).
#include <unistd.h>

#include <iostream>

#include "cli/cli.hpp"

extern char** environ;

int main(int argc, char** argv) {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    if (const auto eq = kv.find('='); eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  spillway::cli::Io io{std::cout, std::cerr, ::isatty(STDOUT_FILENO) == 1, ::isatty(STDERR_FILENO) == 1,
                       std::move(env)};
  const int rc = spillway::cli::Run(std::vector<std::string>(argv + 1, argv + argc), io);
  std::cout.flush();
  return rc;
}
