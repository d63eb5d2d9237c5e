#pragma once
#include <stdexcept>
#include <string>

namespace spillway {

// A failure the client caused or must see; the router turns it into the one error body
// {"error":{"code","message","request_id"}} with this status.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string code, const std::string& message)
      : std::runtime_error(message), status(status), code(std::move(code)) {}
  int status;
  std::string code;
  std::string retry_after;  // seconds, for 503s
};

}  // namespace spillway
