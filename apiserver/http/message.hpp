#pragma once
// Plain request/response types: what the transport hands to the rest of the server. No Beast here.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace spillway::http {

struct Request {
  std::string method;                          // "GET"
  std::string target;                          // as received
  std::string path;                            // percent-decoded, no query
  std::map<std::string, std::string> query;    // percent-decoded
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string request_id;
  bool tls = false;  // arrived on a TLS listener
  bool rate_checked = false;  // the dispatcher already took its rate-limit token (apiserver/rate_limit)
  std::int64_t received_ms = 0;  // the system clock (ms since the epoch) when its first byte was read; 0: unknown
  std::string Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct Response {
  int status = 200;  // never 0: the transport uses 0 for "no answer yet"
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string route = "unmatched";  // route pattern, for metrics and logs
};

using Responder = std::function<void(Response)>;

// What a listener serves. Dispatch may answer on any thread; Finished is called once per response
// written (including the transport's own 400/408/413/431), for logs and metrics.
class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual void Dispatch(Request request, Responder respond) = 0;
  // A request sent with `Expect: 100-continue`, headers only: answer status 100 to have its body
  // read, or the final response (the connection then closes). The default lets every body come.
  virtual void Expect(const Request& head, Responder respond) {
    (void)head;
    Response r;
    r.status = 100;
    respond(std::move(r));
  }
  virtual void Finished(const Request& request, const Response& response, double seconds) = 0;
  // Whether this request may be held long before it is answered (a long poll). Only where its
  // connection waits changes: a plain connection holding one waits as a small record rather than
  // a suspended coroutine, which is what 10,000 agents' held polls cost. Called before Dispatch.
  virtual bool MayHold(const Request& request) const {
    (void)request;
    return false;
  }
};

// The one error body: {"error":{"code","message","request_id"}}, plus any `numbers` (sample_index)
// and `lists` of them (unheld_sample_indexes).
Response ErrorResponse(int status, const std::string& code, const std::string& message,
                       const std::string& request_id,
                       const std::vector<std::pair<std::string, std::int64_t>>& numbers = {},
                       const std::vector<std::pair<std::string, std::vector<std::int64_t>>>& lists = {});
// A valid client-supplied X-Request-Id, or a new one.
std::string RequestIdFrom(const std::string& supplied);
std::string PercentDecode(const std::string& s, bool plus_is_space);

}  // namespace spillway::http
