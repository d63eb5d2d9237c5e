#include "apiserver/console.hpp"

#include "apiserver/errors.hpp"

namespace spillway {
namespace {

std::string ContentTypeOf(std::string_view name) {
  const auto ends = [&](std::string_view ext) {
    return name.size() >= ext.size() && name.substr(name.size() - ext.size()) == ext;
  };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".svg")) return "image/svg+xml";
  return "text/plain; charset=utf-8";
}

void AddSecurityHeaders(http::Response& r) {
  // Scripts and styles only from files of this origin: nothing inline, so an injected <script> or
  // on*= attribute does not run. No page of another origin may frame the console (clickjacking).
  r.headers.emplace_back("Content-Security-Policy",
                         "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                         "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
  r.headers.emplace_back("X-Frame-Options", "DENY");
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  r.headers.emplace_back("Referrer-Policy", "no-referrer");
  r.headers.emplace_back("Cache-Control", "no-cache");
}

}  // namespace

bool IsConsolePath(const std::string& path) { return path == "/console" || path.rfind("/console/", 0) == 0; }

http::Response ConsoleResponse(const http::Request& request) {
  http::Response r;
  r.route = "/console";
  if (request.method != "GET" && request.method != "HEAD") {
    r = http::ErrorResponse(405, "method_not_allowed", request.method + " is not allowed here; allowed: GET, HEAD",
                            request.request_id);
    r.headers.emplace_back("Allow", "GET, HEAD");
    r.route = "/console";
    return r;
  }
  std::string name = request.path == "/console" || request.path == "/console/" ? "index.html" : request.path.substr(9);
  for (const auto& f : ConsoleFiles()) {
    if (name != f.name) continue;
    r.content_type = ContentTypeOf(name);
    r.body = std::string(f.text);
    AddSecurityHeaders(r);
    return r;
  }
  r = http::ErrorResponse(404, "not_found", "no console file " + request.path, request.request_id);
  r.route = "/console";
  AddSecurityHeaders(r);
  return r;
}

}  // namespace spillway
