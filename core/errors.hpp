#pragma once
// Errors in their layer. Core's readers and the database pool throw their own types; domain rules
// throw ApiError for outcomes the caller must see. apiserver/errors.cpp is the one place that maps
// each of them to an HTTP status and the one error body.
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "core/duration.hpp"

namespace spillway {

// A refusal the client must see: a status, a stable code and a message. The router renders it as
// {"error":{"code","message","request_id"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string code, const std::string& message)
      : std::runtime_error(message), status(status), code(std::move(code)) {}
  int status;
  std::string code;
  std::string retry_after;  // seconds, for 503s and 429s
  std::vector<std::pair<std::string, std::string>> headers = {};  // more response headers (429: RateLimit-*)
};

// A request field that failed validation; the message starts with the field's name (422).
struct InvalidInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A request body that is not acceptable JSON: malformed, or an object with a key twice (400).
struct MalformedJson : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The database pool could not run a job: too busy (queue full, no connection in time) or the
// database is unreachable. Callers answer 503 with Retry-After.
struct DbUnavailable : std::runtime_error {
  DbUnavailable(bool busy, const std::string& message, Millis retry_after)
      : std::runtime_error(message), busy(busy), retry_after(retry_after) {}
  bool busy;
  Millis retry_after;
  const char* code() const { return busy ? "database_busy" : "database_unavailable"; }
};

}  // namespace spillway
