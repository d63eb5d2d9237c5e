#pragma once
// The `spillway` CLI: nouns and verbs over the public REST API, as any client would call it.
// Exit codes: 0 done, 1 the API refused or could not be reached, 2 a usage error.
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

namespace spillway::cli {

struct Io {
  std::ostream& out;
  std::ostream& err;
  bool out_is_terminal = false;  // table by default; json when piped
  bool err_is_terminal = false;  // progress lines for --wait
  std::map<std::string, std::string> env;
};

int Run(const std::vector<std::string>& args, Io& io);

}  // namespace spillway::cli
