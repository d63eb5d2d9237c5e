#pragma once
// The web console's static files (console/ in the tree), compiled into the binary so a replica
// serves them with no files beside it and no CDN: /console is its page, /console/<file> the rest.
// The page speaks only the public REST API, signed in with a session cookie (handlers/console.hpp).
#include <string>
#include <string_view>
#include <vector>

#include "apiserver/http/message.hpp"

namespace spillway {

struct EmbeddedFile {
  const char* name;  // "app.js", relative to console/
  std::string_view text;
};
const std::vector<EmbeddedFile>& ConsoleFiles();

// True for /console and /console/…: served by ConsoleResponse, not by the API's routes.
bool IsConsolePath(const std::string& path);
// The file, with the console's security headers (a CSP without inline scripts, no framing); 404
// for an unknown file, 405 for a method other than GET and HEAD.
http::Response ConsoleResponse(const http::Request& request);

}  // namespace spillway
