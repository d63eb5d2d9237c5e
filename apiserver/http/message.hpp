#pragma once
// Plain request/response types: what the transport hands to the rest of the server. No Beast here.
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
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
  int version = 11;  // HTTP/1.1; 10 for HTTP/1.0 (which cannot take a chunked body)
  bool rate_checked = false;  // the dispatcher already took its rate-limit token (apiserver/rate_limit)
  std::int64_t received_ms = 0;  // the system clock (ms since the epoch) when its first byte was read; 0: unknown
  std::string Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// A body sent as it is made (an export of hundreds of thousands of rows), never held whole: a
// producer (a database worker) writes chunks, waiting while more than `limit` bytes are queued
// unsent, and the transport sends them as the client takes them (chunked transfer encoding). When
// the client goes away, or stops reading past the transport's body timeout, Write answers false and
// the producer stops: what a disconnected export costs ends with the chunk in hand.
class BodyStream {
 public:
  explicit BodyStream(std::size_t limit = 256 * 1024) : limit_(limit) {}
  // Producer. Queues `chunk` (an empty one is skipped); false once the reader is gone, or when the
  // queue has not moved for kStall (a reader that went without saying: the producer, a database
  // worker, is never held for good).
  bool Write(std::string chunk);
  static constexpr std::chrono::seconds kStall{300};
  // Producer, once: the body is whole (`complete`), or it failed midway and the transport is to
  // close the connection without the last chunk, so that the client sees a cut-off transfer
  // rather than a short file it might take for all of it.
  void Close(bool complete);
  // Transport: what is queued, or nothing yet. `ended` once the producer closed and all was taken.
  struct Taken {
    std::string bytes;
    bool ended = false, complete = false;
  };
  Taken Take();
  // Transport: `ready` runs (on the producer's thread, or at once) when Take has something new;
  // once per call.
  void OnReady(std::function<void()> ready);
  // Transport: the client is gone; the producer's next Write returns false.
  void Abandon();
  bool abandoned() const;

 private:
  const std::size_t limit_;
  mutable std::mutex mu_;
  std::condition_variable room_;
  std::deque<std::string> queued_;
  std::size_t queued_bytes_ = 0;
  bool closed_ = false, complete_ = false, abandoned_ = false;
  std::function<void()> ready_;
};

// Thrown by BodyWriter once the client of a streamed body is gone: the producer unwinds (its
// transaction rolls back) and nothing more is read for it.
struct ClientGone : std::exception {
  const char* what() const noexcept override { return "the client went away"; }
};

// Text appended to `text()` goes to the stream in chunks of about `chunk` bytes.
class BodyWriter {
 public:
  explicit BodyWriter(BodyStream& stream, std::size_t chunk = 64 * 1024) : stream_(stream), chunk_(chunk) {}
  std::string& text() { return text_; }
  // Sends what is buffered once it is a chunk's worth (throws ClientGone).
  void Step() {
    if (text_.size() >= chunk_) Flush();
  }
  void Flush() {
    if (!stream_.Write(std::move(text_))) throw ClientGone();
    text_.clear();
    text_.reserve(chunk_ + chunk_ / 4);
  }

 private:
  BodyStream& stream_;
  const std::size_t chunk_;
  std::string text_;
};

struct Response {
  int status = 200;  // never 0: the transport uses 0 for "no answer yet"
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string route = "unmatched";  // route pattern, for metrics and logs
  // When set, the body comes from here as it is made (`body` is unused).
  std::shared_ptr<BodyStream> stream;
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
