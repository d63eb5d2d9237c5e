#pragma once
// One outbound HTTP(S) POST with a deadline (webhook deliveries): a fresh connection each time, the
// peer's certificate checked against the system's CAs (and ca_file's) and the host name, no
// redirects followed (a 3xx is an answer like any other), a response body read up to 64 KiB.
#include <string>
#include <utility>
#include <vector>

#include "core/duration.hpp"

namespace spillway::http {

struct OutboundRequest {
  std::string scheme, host, port, target;  // "https", "hooks.example", "443", "/spillway?x=1"
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // sent as application/json
};

struct OutboundResult {
  int status = 0;     // 0: no response (error says why)
  std::string error;  // "" for a response
};

OutboundResult Post(const OutboundRequest& request, Millis timeout, const std::string& ca_file = "");

}  // namespace spillway::http
