#pragma once
// The one place where an error becomes an HTTP answer: ApiError as it says, InvalidInput 422,
// MalformedJson 400, DbUnavailable and an unreachable database 503 with Retry-After, a race still
// lost after the retries 503, anything else 500 (logged with the request id, never shown).
#include <exception>
#include <string>

#include "apiserver/http/message.hpp"

namespace spillway {

struct ApiError;
struct DbUnavailable;

http::Response ErrorResponseFor(const ApiError& e, const std::string& request_id);
http::Response ErrorResponseFor(const DbUnavailable& e, const std::string& request_id);
// Maps the exception in flight; call from inside a catch block.
http::Response ErrorResponseForCurrent(const std::string& request_id, const std::string& route);

}  // namespace spillway
