#include "apiserver/http/server.hpp"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>
#include <type_traits>

#include "apiserver/http/beast.hpp"
#include "core/log.hpp"

namespace spillway::http {
using namespace detail;

namespace {

struct SessionState {
  std::atomic<bool> busy{false};        // a complete request is being served
  beast::tcp_stream* stream = nullptr;  // touched only on the session's strand
  // When the request being read arrived (its first byte, or the end of the one before it in a
  // pipeline), system clock ms: what a host's clock is compared with, whatever the request waits
  // for afterwards. Kept here rather than in the coroutine's frame (session's strand only).
  std::int64_t arrived_ms = 0;
};

struct Listener {
  ListenerOptions options;
  Dispatcher* dispatcher;
  tcp::acceptor acceptor;
  std::unique_ptr<ssl::context> tls;
};

Request ToRequest(const bhttp::request<bhttp::string_body>& in) {
  Request r;
  r.method = std::string(in.method_string());
  r.target = std::string(in.target());
  const auto q = r.target.find('?');
  r.path = PercentDecode(r.target.substr(0, q), false);
  if (q != std::string::npos) {
    const std::string qs = r.target.substr(q + 1);
    size_t start = 0;
    while (start <= qs.size()) {
      size_t amp = qs.find('&', start);
      if (amp == std::string::npos) amp = qs.size();
      const std::string part = qs.substr(start, amp - start);
      if (!part.empty()) {
        const auto eq = part.find('=');
        r.query[PercentDecode(part.substr(0, eq), true)] =
            eq == std::string::npos ? std::string() : PercentDecode(part.substr(eq + 1), true);
      }
      start = amp + 1;
    }
  }
  for (const auto& f : in) {
    std::string name(f.name_string());
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    auto& slot = r.headers[name];
    slot = slot.empty() ? std::string(f.value()) : slot + ", " + std::string(f.value());
  }
  r.body = in.body();
  r.version = static_cast<int>(in.version());
  r.request_id = RequestIdFrom(r.Header("x-request-id"));
  return r;
}

// RFC 9112 §6.1, §6.3: a request's body is framed by Transfer-Encoding only when its final (here:
// only) coding is chunked. Anything else — identity, gzip, an unknown coding, chunked applied twice
// or not last, or Transfer-Encoding beside Content-Length — cannot be framed safely: a proxy in
// front may read the body's end elsewhere, and what it took for body could run here as a second
// request (smuggling). Such a request is answered 400 and the connection closed. Returns why, or "".
std::string FramingProblem(const bhttp::request<bhttp::string_body>& req) {
  std::vector<std::string> codings;
  bool any = false;
  for (const auto& f : req) {
    if (f.name() != bhttp::field::transfer_encoding) continue;
    any = true;
    std::string v(f.value());
    size_t start = 0;
    while (start <= v.size()) {
      size_t comma = v.find(',', start);
      if (comma == std::string::npos) comma = v.size();
      std::string c = v.substr(start, comma - start);
      const auto semi = c.find(';');
      if (semi != std::string::npos) return "Transfer-Encoding codings with parameters are not accepted";
      while (!c.empty() && (c.front() == ' ' || c.front() == '\t')) c.erase(c.begin());
      while (!c.empty() && (c.back() == ' ' || c.back() == '\t')) c.pop_back();
      std::transform(c.begin(), c.end(), c.begin(), [](unsigned char ch) { return std::tolower(ch); });
      codings.push_back(c);
      start = comma + 1;
    }
  }
  if (!any) return "";
  if (codings.size() != 1 || codings[0] != "chunked")
    return "unsupported Transfer-Encoding: only \"chunked\" (alone) frames a request body here";
  if (req.find(bhttp::field::content_length) != req.end())
    return "a request may not carry both Transfer-Encoding and Content-Length";
  return "";
}

// Status line, headers and body, as one string. A response to HEAD keeps its Content-Length but
// sends no body (the client would take the body for the next response).
std::string Serialize(const Response& res, const std::string& request_id, bool keep_alive, bool head) {
  const auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(res.status));
  const bool no_body = res.status / 100 == 1 || res.status == 204 || res.status == 304;
  std::string h;
  h.reserve(160 + res.content_type.size() + request_id.size() + 64 * res.headers.size() + res.body.size());
  h.append("HTTP/1.1 ").append(std::to_string(res.status)).append(" ").append(reason.data(), reason.size());
  h.append("\r\nServer: spillway\r\nContent-Type: ").append(res.content_type);
  h.append("\r\nX-Request-Id: ").append(request_id);
  for (const auto& [k, v] : res.headers) h.append("\r\n").append(k).append(": ").append(v);
  // A streamed body's length is not known: chunks frame it (HTTP/1.1), or the connection's close
  // ends it (an HTTP/1.0 client, which is then never kept alive).
  if (res.stream) {
    if (keep_alive) h.append("\r\nTransfer-Encoding: chunked");
  } else if (!no_body) {
    h.append("\r\nContent-Length: ").append(std::to_string(res.body.size()));
  }
  if (!keep_alive) h.append("\r\nConnection: close");
  h.append("\r\n\r\n");
  if (!no_body && !head && !res.stream) h.append(res.body);
  return h;
}

// Where a dispatcher's answer lands: it may answer inside the call (health, 404s) or later from a
// database worker on any thread. TakeEarly() returns an answer already given, so the common inline
// case costs no trip through the scheduler; Await() resumes the session on its own executor.
struct ResponseSlot {
  std::mutex mu;
  std::optional<Response> early;
  std::function<void(Response)> resume;

  static Responder ResponderFor(const std::shared_ptr<ResponseSlot>& slot) {
    return [slot](Response resp) {
      std::unique_lock lk(slot->mu);
      if (slot->resume) {
        auto resume = std::move(slot->resume);
        lk.unlock();
        resume(std::move(resp));
      } else {
        slot->early = std::move(resp);
      }
    };
  }
  std::optional<Response> TakeEarly() {
    std::lock_guard lk(mu);
    std::optional<Response> r = std::move(early);
    early.reset();
    return r;
  }
  // A raw pointer, not a shared_ptr: GCC 12 destroys some temporaries of a co_await expression
  // twice, which double-released the capture. The caller's frame owns the slot.
  auto Await() {
    return net::async_initiate<decltype(net::use_awaitable), void(Response)>(
        [p = this](auto handler) {
          auto* slot = p;
          auto ex = net::get_associated_executor(handler);
          auto h = std::make_shared<decltype(handler)>(std::move(handler));
          std::unique_lock lk(slot->mu);
          if (slot->early) {
            Response r = std::move(*slot->early);
            slot->early.reset();
            lk.unlock();
            net::post(ex, [h, r = std::move(r)]() mutable { (*h)(std::move(r)); });
            return;
          }
          slot->resume = [h, ex](Response r) {
            net::post(ex, [h, r = std::move(r)]() mutable { (*h)(std::move(r)); });
          };
        },
        net::use_awaitable);
  }
};

}  // namespace

namespace {
thread_local net::io_context* tl_io_context = nullptr;  // the io thread's own, while it runs
}  // namespace

// A descriptor borrowed from its owner (libpq): released, never closed, whether the wait completes
// or is destroyed unrun at shutdown.
struct Borrowed {
  Borrowed(net::io_context& io, int fd) : d(io, fd) {}
  ~Borrowed() {
    if (d.is_open()) d.release();
  }
  net::posix::stream_descriptor d;
};

bool WhenReadable(int fd, std::function<void(bool readable)> ready) {
  if (!tl_io_context) return false;
  auto b = std::make_shared<Borrowed>(*tl_io_context, fd);
  b->d.async_wait(net::posix::stream_descriptor::wait_read,
                  [b, ready = std::move(ready)](const beast::error_code& ec) {
                    b->d.release();
                    ready(!ec);
                  });
  return true;
}

bool PostHere(std::function<void()> fn) {
  if (!tl_io_context) return false;
  net::post(*tl_io_context, std::move(fn));
  return true;
}

// A request read whole, with what the session needs of it after it goes to the dispatcher.
struct Incoming {
  Request req;
  bool keep_alive = false;
  std::chrono::steady_clock::time_point started;
};

// A request the dispatcher holds (a long poll), as its connection leaves its coroutine: where its
// answer will land, and what writing it needs.
struct Held {
  std::shared_ptr<ResponseSlot> slot;
  Request sent;  // method, path and request id only
  bool keep_alive = false;
  std::chrono::steady_clock::time_point started;
};

// A held request's answer, for the coroutine that takes its connection back.
struct Answer {
  Request sent;
  Response response;
  bool keep_alive = false;
  std::chrono::steady_clock::time_point started;
};

// One io_context per io thread, each run by that thread alone: a connection lives on one of them
// (round robin at accept), so its handlers are serialised without strands and no two threads
// contend for one scheduler. Listeners, signals and the drain watcher live on the first.
struct Runtime::Impl {
  explicit Impl(int n) {
    for (int i = 0; i < std::max(1, n); ++i) contexts.push_back(std::make_unique<net::io_context>(1));
    signals = std::make_unique<net::signal_set>(*contexts[0], SIGINT, SIGTERM);
  }
  net::io_context& Next() { return *contexts[next_context++ % contexts.size()]; }

  std::vector<std::unique_ptr<net::io_context>> contexts;
  std::atomic<size_t> next_context{0};
  std::unique_ptr<net::signal_set> signals;
  std::vector<std::unique_ptr<Listener>> listeners;
  std::atomic<bool> draining{false};
  std::vector<std::function<void()>> drain_hooks;
  std::mutex mu;
  std::set<std::shared_ptr<SessionState>> sessions;

  void BeginDrain() {
    if (draining.exchange(true)) return;
    log::Info("shutting down: refusing new connections, draining requests in flight");
    for (auto& hook : drain_hooks) hook();
    for (auto& l : listeners)
      net::post(l->acceptor.get_executor(), [l = l.get()] {
        beast::error_code ec;
        l->acceptor.close(ec);
      });
    std::lock_guard lk(mu);
    for (const auto& st : sessions)
      if (!st->busy) CancelSession(st);
  }

  // Ends a session that is between requests; runs on its io_context so it cannot race the session.
  static void CancelSession(const std::shared_ptr<SessionState>& st) {
    if (!st->stream) return;
    net::post(st->stream->get_executor(), [st] {
      if (st->stream && !st->busy) st->stream->cancel();
    });
  }

  net::awaitable<void> AcceptLoop(Listener& l) {
    for (;;) {
      auto [ec, socket] = co_await l.acceptor.async_accept(Next(), net::as_tuple(net::use_awaitable));
      if (draining || ec == net::error::operation_aborted) co_return;
      if (ec) {
        log::Warn("accept failed", {{"listener", l.options.name}, {"error", ec.message()}});
        net::steady_timer t(co_await net::this_coro::executor, std::chrono::milliseconds(50));
        co_await t.async_wait(net::use_awaitable);
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      auto ex = socket.get_executor();
      if (l.tls) net::co_spawn(ex, TlsConnection(l, std::move(socket)), net::detached);
      else net::co_spawn(ex, PlainConnection(l, std::move(socket), OpenSession(), nullptr), net::detached);
    }
  }

  std::shared_ptr<SessionState> OpenSession() {
    auto st = std::make_shared<SessionState>();
    std::lock_guard lk(mu);
    sessions.insert(st);
    return st;
  }
  void CloseSession(const std::shared_ptr<SessionState>& st) {
    st->stream = nullptr;
    std::lock_guard lk(mu);
    sessions.erase(st);
  }
  static void SessionFailed(const Listener& l, const std::exception& e) {
    log::Error("session failed", {{"listener", l.options.name}, {"error", e.what()}});
  }

  // A plain and a TLS connection are coroutines of their own: a coroutine's frame holds every local
  // of every branch, and a plain session (10,000 agents' held long polls) should not carry a TLS
  // stream's.
  net::awaitable<void> PlainConnection(Listener& l, tcp::socket socket, std::shared_ptr<SessionState> st,
                                       std::unique_ptr<Answer> first) {
    std::unique_ptr<Held> held;
    try {
      beast::error_code nec;
      socket.non_blocking(true, nec);  // Serve's reads of what has already arrived never wait
      beast::tcp_stream stream(std::move(socket));
      st->stream = &stream;
      bool open = true;
      if (first) {  // a held request's answer, back from its parking
        open = first->keep_alive && !draining;
        open = co_await Write(l, stream, first->sent, std::move(first->response), open, first->started);
        first.reset();
      }
      if (open) held = co_await Serve(l, stream, *st);
      if (held) {
        st->stream = nullptr;
        Park(l, stream.release_socket(), std::move(st), std::move(*held));
        co_return;
      }
      beast::error_code ec;
      stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    } catch (const std::exception& e) {
      SessionFailed(l, e);
    }
    CloseSession(st);
  }

  // A held request's connection waits as this record, not as a suspended coroutine: 10,000 agents'
  // long polls are 10,000 of them. Its answer starts a new coroutine on the connection's io thread,
  // which writes it and serves the connection on.
  struct Parked {
    Listener* listener;
    tcp::socket socket;
    std::shared_ptr<SessionState> st;
    std::string method, path, request_id;
    bool keep_alive;
    std::chrono::steady_clock::time_point started;
  };

  void Park(Listener& l, tcp::socket socket, std::shared_ptr<SessionState> st, Held held) {
    auto parked = std::make_shared<Parked>(Parked{&l, std::move(socket), std::move(st), std::move(held.sent.method),
                                                  std::move(held.sent.path), std::move(held.sent.request_id),
                                                  held.keep_alive, held.started});
    std::function<void(Response)> resume = [this, parked](Response response) {
      auto ex = parked->socket.get_executor();
      net::post(ex, [this, parked, ex, response = std::move(response)]() mutable {
        auto first = std::make_unique<Answer>();
        first->sent.method = std::move(parked->method);
        first->sent.path = std::move(parked->path);
        first->sent.request_id = std::move(parked->request_id);
        first->response = std::move(response);
        first->keep_alive = parked->keep_alive;
        first->started = parked->started;
        net::co_spawn(ex,
                      PlainConnection(*parked->listener, std::move(parked->socket), std::move(parked->st),
                                      std::move(first)),
                      net::detached);
      });
    };
    ResponseSlot& slot = *held.slot;
    std::unique_lock lk(slot.mu);
    if (slot.early) {  // answered while the connection was being parked
      Response r = std::move(*slot.early);
      slot.early.reset();
      lk.unlock();
      resume(std::move(r));
      return;
    }
    slot.resume = std::move(resume);
  }

  net::awaitable<void> TlsConnection(Listener& l, tcp::socket socket) {
    auto st = OpenSession();
    try {
      beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *l.tls);
      st->stream = &beast::get_lowest_layer(stream);
      st->stream->expires_after(l.options.header_timeout);
      auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, net::as_tuple(net::use_awaitable));
      if (!ec) {
        co_await Serve(l, stream, *st);  // a TLS connection is never parked: it returns no Held
        st->stream->expires_after(std::chrono::seconds(2));
        co_await stream.async_shutdown(net::as_tuple(net::use_awaitable));
      } else {
        log::Debug("tls handshake failed", {{"listener", l.options.name}, {"error", ec.message()}});
      }
    } catch (const std::exception& e) {
      SessionFailed(l, e);
    }
    CloseSession(st);
  }

  // Writes a response; false when the connection is to close after it (a streamed body cut off, or
  // one an HTTP/1.0 client reads to the connection's end).
  template <class Stream>
  net::awaitable<bool> Write(Listener& l, Stream& stream, const Request& req, Response res, bool keep_alive,
                             std::chrono::steady_clock::time_point started) {
    bool go_on = keep_alive;
    if (res.stream) {
      go_on = co_await WriteStreamed(l, stream, req, res, keep_alive && req.version >= 11);
    } else {
      // The whole response in one buffer and one send: cheaper than Beast's serializer, whose
      // many-buffer sequence costs more than the copy. Header values come from our own code (the
      // request id is checked by RequestIdFrom), so no field needs escaping.
      const std::string out = Serialize(res, req.request_id, keep_alive, req.method == "HEAD");
      beast::get_lowest_layer(stream).expires_after(l.options.body_timeout);
      co_await net::async_write(stream, net::buffer(out), net::as_tuple(net::use_awaitable));
      res.body.clear();
    }
    l.dispatcher->Finished(req, res,
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    co_return go_on;
  }

  // Resumes the session once `body` has something to send (or has ended).
  static auto BodyReady(BodyStream& body) {
    return net::async_initiate<decltype(net::use_awaitable), void()>(
        [p = &body](auto handler) {
          auto ex = net::get_associated_executor(handler);
          auto h = std::make_shared<decltype(handler)>(std::move(handler));
          p->OnReady([h, ex] { net::post(ex, [h]() mutable { (*h)(); }); });
        },
        net::use_awaitable);
  }

  // The head at once, then each chunk as the producer makes it, each send under the body timeout: a
  // client that stops reading, or goes, abandons the stream and its producer stops. Only a body
  // the producer closed whole gets its last chunk; one that failed midway is cut off with the
  // connection.
  template <class Stream>
  net::awaitable<bool> WriteStreamed(Listener& l, Stream& stream, const Request& req, Response& res, bool chunked) {
    auto body = res.stream;
    // However this ends (the client gone, the server stopping with the session mid-body), the
    // producer is told: abandoning a stream the producer closed whole changes nothing.
    struct Abandon {
      std::shared_ptr<BodyStream> body;
      ~Abandon() { body->Abandon(); }
    } abandon_on_exit{body};
    auto& tcp_layer = beast::get_lowest_layer(stream);
    std::string out = Serialize(res, req.request_id, chunked, req.method == "HEAD");
    if (req.method == "HEAD") body->Abandon();
    for (bool first = true;; first = false) {
      BodyStream::Taken taken;
      if (!first && !body->abandoned()) {
        co_await BodyReady(*body);
        taken = body->Take();
      }
      if (!taken.bytes.empty()) {
        if (chunked) {
          char size[24];
          std::snprintf(size, sizeof size, "%zx\r\n", taken.bytes.size());
          out.append(size).append(taken.bytes).append("\r\n");
        } else {
          out.append(taken.bytes);
        }
        std::string().swap(taken.bytes);
      }
      const bool whole = taken.ended && taken.complete;
      if (whole && chunked) out.append("0\r\n\r\n");
      if (!out.empty()) {
        tcp_layer.expires_after(l.options.body_timeout);
        auto [ec, n] = co_await net::async_write(stream, net::buffer(out), net::as_tuple(net::use_awaitable));
        std::string().swap(out);
        if (ec) {
          body->Abandon();
          co_return false;
        }
      }
      if (body->abandoned()) co_return chunked;  // HEAD: the head was all of it
      if (taken.ended) co_return whole && chunked;
    }
  }

  // One request read whole from the connection, or nullptr when the connection is to close (any
  // answer it needed, such as a 400 or 413, was written). A coroutine of its own so that the parser
  // and the reading state live in its frame, gone once it returns: a session parked on a long
  // poll holds only the small frame of Serve.
  template <class Stream>
  net::awaitable<std::unique_ptr<Incoming>> ReadRequest(Listener& l, Stream& stream, beast::flat_buffer& buffer,
                                                        SessionState& st) {
    auto& tcp_layer = beast::get_lowest_layer(stream);
    const auto started = std::chrono::steady_clock::now();
    st.arrived_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    bhttp::request_parser<bhttp::string_body> parser;
    parser.header_limit(16 * 1024);
    parser.body_limit(l.options.max_body_bytes);
    Request meta;  // for requests that fail before they are whole
    auto fail = [&](int status, const char* code, const std::string& message) {
      if (parser.is_header_done()) meta = ToRequest(parser.get());
      if (meta.request_id.empty()) meta.request_id = RequestIdFrom("");
      return ErrorResponse(status, code, message, meta.request_id);
    };

    // Parse what is buffered synchronously and read only when the parser needs more: a
    // pipelined or small request costs no extra trip through the scheduler.
    parser.eager(true);
    // The header deadline runs from the first read the headers need beyond what is buffered,
    // the body deadline likewise: a request that arrived whole arms neither timer.
    beast::error_code hec;
    std::string framing;  // why the request's framing was refused, if it was
    bool body_phase = false, header_timer = false, body_timer = false;
    for (;;) {
      if (buffer.size() > 0) {
        const auto used = parser.put(buffer.data(), hec);
        buffer.consume(used);
        if (hec == bhttp::error::need_more) {
          hec = {};
        } else if (hec || parser.is_done()) {
          break;
        }
        if (parser.is_header_done() && !body_phase) {
          body_phase = true;
          if (const std::string why = FramingProblem(parser.get()); !why.empty()) {
            framing = why;
            break;
          }
          if (beast::iequals(parser.get()[bhttp::field::expect], "100-continue") && !parser.is_done()) {
            // RFC 9110 §10.1.1: answer at once with the final status when the headers alone decide
            // it (no route, a key refused); only a request that may proceed is told to send its body.
            const Request head = ToRequest(parser.get());
            auto slot = std::make_shared<ResponseSlot>();
            l.dispatcher->Expect(head, ResponseSlot::ResponderFor(slot));
            Response verdict;
            if (auto given = slot->TakeEarly()) verdict = std::move(*given);
            else verdict = co_await slot->Await();
            if (verdict.status != 100) {
              st.busy = true;
              co_await Write(l, stream, head, std::move(verdict), false, started);
              co_return nullptr;
            }
            bhttp::response<bhttp::empty_body> cont{bhttp::status::continue_, 11};
            auto [wec, wn] = co_await bhttp::async_write(stream, cont, net::as_tuple(net::use_awaitable));
            if (wec) co_return nullptr;
          }
        }
        if (used > 0 && buffer.size() > 0) continue;
      }
      if (buffer.size() >= buffer.max_size()) {
        hec = bhttp::error::header_limit;
        break;
      }
      if (!parser.is_header_done() && !header_timer) {
        header_timer = true;
        tcp_layer.expires_after(l.options.header_timeout);
      } else if (parser.is_header_done() && !body_timer) {
        body_timer = true;
        tcp_layer.expires_after(l.options.body_timeout);
      }
      auto [rec, rn] = co_await stream.async_read_some(
          buffer.prepare(std::min<size_t>(8192, buffer.max_size() - buffer.size())), net::as_tuple(net::use_awaitable));
      if (rec) {
        hec = rec == net::error::eof ? beast::error_code(bhttp::error::end_of_stream) : rec;
        break;
      }
      buffer.commit(rn);
    }
    if (!hec && framing.empty() && parser.is_header_done()) framing = FramingProblem(parser.get());
    if (!framing.empty()) {
      // Whatever follows in the buffer is not trusted as a request: answer and close.
      st.busy = true;
      co_await Write(l, stream, meta, fail(400, "bad_request", framing), false, started);
      co_return nullptr;
    }
    if (hec) {
      Response err;
      if (hec == bhttp::error::end_of_stream || hec == net::error::eof ||
          hec == net::error::connection_reset || hec == net::error::operation_aborted) {
        co_return nullptr;
      } else if (hec == beast::error::timeout) {
        // tcp_stream has already closed the socket: a slow client is cut off without an answer.
        // It is still counted and logged as a 408.
        if (parser.is_header_done()) meta = ToRequest(parser.get());
        if (meta.request_id.empty()) meta.request_id = RequestIdFrom("");
        l.dispatcher->Finished(meta, ErrorResponse(408, "request_timeout", "request too slow", meta.request_id),
                               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        co_return nullptr;
      } else if (hec == bhttp::error::body_limit) {
        const std::string why =
            "the request body is larger than " + std::to_string(l.options.max_body_bytes) + " bytes";
        err = fail(413, "payload_too_large", why);
      } else if (hec == bhttp::error::header_limit) {
        err = fail(431, "headers_too_large", "the request headers are too large");
      } else {
        err = fail(400, "bad_request", "malformed HTTP request");
      }
      tcp_layer.expires_after(l.options.body_timeout);
      st.busy = true;
      co_await Write(l, stream, meta, std::move(err), false, started);
      co_return nullptr;
    }

    st.busy = true;
    tcp_layer.expires_never();
    auto in = std::make_unique<Incoming>();
    in->req = ToRequest(parser.get());
    in->req.received_ms = st.arrived_ms;
    in->req.tls = l.options.tls;
    in->keep_alive = parser.get().keep_alive();
    in->started = started;
    co_return in;
  }

  // Serves requests until the connection is to close (returns nullptr) or, on a plain connection,
  // a request the dispatcher may hold long (a long poll) is not answered at once: then it returns
  // what the answer needs, and the caller parks the connection (Park).
  template <class Stream>
  net::awaitable<std::unique_ptr<Held>> Serve(Listener& l, Stream& stream, SessionState& st) {
    constexpr bool kParkable = std::is_same_v<Stream, beast::tcp_stream>;
    auto& tcp_layer = beast::get_lowest_layer(stream);
    beast::flat_buffer buffer(l.options.max_body_bytes + 64 * 1024);
    for (;;) {
      st.busy = false;
      if (draining) co_return nullptr;
      if (buffer.size() == 0) {
        // Idle between requests: wait for the first byte under the idle timeout, so the header
        // deadline below measures only how long the request itself takes to arrive.
        tcp_layer.expires_after(l.options.idle_timeout);
        if constexpr (kParkable) {
          // A plain connection waits for that byte alone, holding no read buffer (as nginx does):
          // thousands of idle keep-alive connections then cost their sockets, not 8 KiB each. What
          // else has arrived is then taken without waiting (the socket is non-blocking).
          buffer.shrink_to_fit();
          char first = 0;
          auto [ec, n] = co_await stream.async_read_some(net::buffer(&first, 1), net::as_tuple(net::use_awaitable));
          if (ec || n != 1) co_return nullptr;
          auto room = buffer.prepare(8192);
          *static_cast<char*>(room.data()) = first;
          beast::error_code rec;
          const size_t more = stream.socket().read_some(net::buffer(room + 1), rec);
          buffer.commit(1 + (rec ? 0 : more));  // would_block: ReadRequest reads the rest
        } else {
          auto [ec, n] = co_await stream.async_read_some(buffer.prepare(8192), net::as_tuple(net::use_awaitable));
          if (ec) co_return nullptr;
          buffer.commit(n);
        }
      }
      std::unique_ptr<Incoming> in = co_await ReadRequest(l, stream, buffer, st);
      if (!in) co_return nullptr;
      Request copy;  // what Finished needs once the request has gone to the dispatcher
      copy.method = in->req.method;
      copy.path = in->req.path;
      copy.request_id = in->req.request_id;
      copy.version = in->req.version;
      const bool wants_keep_alive = in->keep_alive;
      const auto started = in->started;
      const bool may_hold = kParkable && l.dispatcher->MayHold(in->req);
      auto slot = std::make_shared<ResponseSlot>();
      l.dispatcher->Dispatch(std::move(in->req), ResponseSlot::ResponderFor(slot));
      in.reset();
      Response res;
      if (auto given = slot->TakeEarly()) {
        res = std::move(*given);
      } else if (may_hold && buffer.size() == 0) {
        // Held (a long poll): nothing of this coroutine is needed while it waits.
        co_return std::make_unique<Held>(Held{std::move(slot), std::move(copy), wants_keep_alive, started});
      } else {
        // Answered later by a pool worker: an empty read buffer is let go meanwhile (the next
        // request allocates it again).
        if (buffer.size() == 0) buffer.shrink_to_fit();
        res = co_await slot->Await();
      }
      const bool keep_alive = wants_keep_alive && !draining;
      if (!co_await Write(l, stream, copy, std::move(res), keep_alive, started)) co_return nullptr;
    }
  }
};

Runtime::Runtime(int io_threads) : impl_(std::make_unique<Impl>(io_threads)) {}
Runtime::~Runtime() = default;

std::uint16_t Runtime::AddListener(const ListenerOptions& options, Dispatcher& dispatcher) {
  beast::error_code ec;
  auto address = net::ip::make_address(options.listen.host, ec);
  tcp::endpoint endpoint;
  if (!ec) {
    endpoint = tcp::endpoint(address, options.listen.port);
  } else {
    tcp::resolver resolver(*impl_->contexts[0]);
    auto results = resolver.resolve(options.listen.host, std::to_string(options.listen.port), ec);
    if (ec || results.empty())
      throw std::runtime_error(options.name + ": cannot resolve listen address " + options.listen.host);
    endpoint = results.begin()->endpoint();
  }
  auto l = std::make_unique<Listener>(Listener{options, &dispatcher, tcp::acceptor(*impl_->contexts[0]), nullptr});
  if (options.tls) {
    l->tls = std::make_unique<ssl::context>(ssl::context::tls_server);
    SSL_CTX* ctx = l->tls->native_handle();
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    l->tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                        ssl::context::single_dh_use);
    // TLS 1.2 offers forward-secret AEAD suites only (Mozilla "intermediate"); TLS 1.3's own suites
    // are all AEAD already.
    if (SSL_CTX_set_cipher_list(ctx,
                                "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                                "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305") != 1)
      throw std::runtime_error("tls: cannot set the cipher list");
    l->tls->use_certificate_chain_file(options.cert_file, ec);
    if (ec) throw std::runtime_error("tls.cert_file: cannot load " + options.cert_file + ": " + ec.message());
    l->tls->use_private_key_file(options.key_file, ssl::context::pem, ec);
    if (ec) throw std::runtime_error("tls.key_file: cannot load " + options.key_file + ": " + ec.message());
    if (SSL_CTX_check_private_key(ctx) != 1)
      throw std::runtime_error("tls.key_file does not match tls.cert_file");
  }
  auto& acc = l->acceptor;
  acc.open(endpoint.protocol(), ec);
  if (!ec) acc.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acc.bind(endpoint, ec);
  if (!ec) acc.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error(options.name + ": cannot listen on " + options.listen.host + ":" +
                             std::to_string(options.listen.port) + ": " + ec.message());
  const auto port = acc.local_endpoint().port();
  Listener& ref = *l;
  impl_->listeners.push_back(std::move(l));
  net::co_spawn(ref.acceptor.get_executor(), impl_->AcceptLoop(ref), net::detached);
  log::Info("listening", {{"listener", options.name}, {"address", options.listen.host}, {"port", port},
                          {"tls", options.tls}});
  return port;
}

void Runtime::Run(Millis shutdown_timeout) {
  auto& rt = *impl_;
  rt.signals->async_wait([&rt](const beast::error_code& ec, int) {
    if (!ec) rt.BeginDrain();
  });
  // After the drain starts, stop once no session is left or the shutdown timeout has passed.
  net::co_spawn(
      *rt.contexts[0],
      [&rt, shutdown_timeout]() -> net::awaitable<void> {
        net::steady_timer timer(co_await net::this_coro::executor);
        while (!rt.draining) {
          timer.expires_after(std::chrono::milliseconds(20));
          co_await timer.async_wait(net::use_awaitable);
        }
        const auto deadline = std::chrono::steady_clock::now() + shutdown_timeout;
        for (;;) {
          {
            std::lock_guard lk(rt.mu);
            if (rt.sessions.empty()) break;
            for (const auto& st : rt.sessions)
              if (!st->busy) Impl::CancelSession(st);
          }
          if (std::chrono::steady_clock::now() >= deadline) {
            log::Warn("shutdown timeout passed with requests still in flight");
            break;
          }
          timer.expires_after(std::chrono::milliseconds(20));
          co_await timer.async_wait(net::use_awaitable);
        }
        for (auto& c : rt.contexts) c->stop();
      },
      net::detached);
  // Memory held by connections comes back when they close: glibc keeps freed heap for reuse, so
  // once many sessions have gone (a fleet's agents moved to another replica, a storm passed) it
  // is handed back to the system (malloc_trim).
  net::co_spawn(
      *rt.contexts[0],
      [&rt]() -> net::awaitable<void> {
        net::steady_timer timer(co_await net::this_coro::executor);
        std::size_t peak = 0;
        while (!rt.draining) {
          timer.expires_after(std::chrono::seconds(5));
          co_await timer.async_wait(net::as_tuple(net::use_awaitable));
          std::size_t now;
          {
            std::lock_guard lk(rt.mu);
            now = rt.sessions.size();
          }
          peak = std::max(peak, now);
          if (peak >= now + 256) {
            ::malloc_trim(0);
            peak = now;
          }
        }
      },
      net::detached);
  // Contexts other than the first may be idle (no connection yet): keep them running until stopped.
  std::vector<net::executor_work_guard<net::io_context::executor_type>> guards;
  for (auto& c : rt.contexts) guards.push_back(net::make_work_guard(*c));
  std::vector<std::thread> pool;
  for (size_t i = 1; i < rt.contexts.size(); ++i)
    pool.emplace_back([c = rt.contexts[i].get()] {
      tl_io_context = c;
      c->run();
    });
  tl_io_context = rt.contexts[0].get();
  rt.contexts[0]->run();
  tl_io_context = nullptr;
  for (auto& t : pool) t.join();
}

void Runtime::RequestStop() { impl_->BeginDrain(); }
void Runtime::OnDrain(std::function<void()> hook) { impl_->drain_hooks.push_back(std::move(hook)); }
bool Runtime::Draining() const { return impl_->draining; }

}  // namespace spillway::http
