#include "apiserver/router.hpp"

#include <algorithm>

namespace spillway {

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < path.size()) {
    if (path[start] == '/') {
      ++start;
      continue;
    }
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    out.push_back(path.substr(start, end - start));
    start = end;
  }
  return out;
}

Router::Router(std::vector<Route> routes) : routes_(std::move(routes)) {
  for (const auto& r : routes_) segments_.push_back(SplitPath(r.pattern));
}

Router::Match Router::Find(const std::string& method, const std::string& path) const {
  Match m;
  // A trailing slash is a different resource in this API; it does not match.
  if (path.empty() || path[0] != '/' || (path.size() > 1 && path.back() == '/')) return m;
  const auto segs = SplitPath(path);
  for (size_t i = 0; i < routes_.size(); ++i) {
    const auto& pat = segments_[i];
    if (pat.size() != segs.size()) continue;
    std::map<std::string, std::string> params;
    bool ok = true;
    for (size_t k = 0; k < pat.size() && ok; ++k) {
      if (pat[k].size() > 2 && pat[k].front() == '{' && pat[k].back() == '}')
        params[pat[k].substr(1, pat[k].size() - 2)] = segs[k];
      else
        ok = pat[k] == segs[k];
    }
    if (!ok) continue;
    if (routes_[i].method == method || (method == "HEAD" && routes_[i].method == "GET")) {
      m.route = &routes_[i];
      m.params = std::move(params);
      m.allowed.clear();
      return m;
    }
    auto allow = [&](const std::string& verb) {
      if (std::find(m.allowed.begin(), m.allowed.end(), verb) == m.allowed.end()) m.allowed.push_back(verb);
    };
    allow(routes_[i].method);
    if (routes_[i].method == "GET") allow("HEAD");
  }
  return m;
}

}  // namespace spillway
