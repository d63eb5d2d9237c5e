#include "agent/http_client.hpp"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <optional>
#include <vector>

namespace spillway::agent {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;

struct HttpClient::Impl {
  std::string host, port, user_agent;
  bool tls = false;
  net::io_context ioc;
  std::optional<ssl::context> tls_ctx;
  std::optional<beast::tcp_stream> stream;                       // http://
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_stream;  // https://
  beast::flat_buffer buffer;

  bool Connected() const { return tls ? tls_stream.has_value() : stream.has_value(); }
  void Drop() {
    stream.reset();
    tls_stream.reset();
  }
  beast::tcp_stream& Tcp() { return tls ? beast::get_lowest_layer(*tls_stream) : *stream; }
  // Runs one async operation to completion under the stream's deadline.
  template <class Start>
  beast::error_code RunOp(Start&& start) {
    beast::error_code result;
    bool done = false;
    start([&](beast::error_code ec, std::size_t) {
      result = ec;
      done = true;
    });
    ioc.restart();
    ioc.run();
    if (!done) result = net::error::operation_aborted;
    return result;
  }
  // fn(stream) on whichever stream this client speaks.
  template <class Fn>
  auto With(Fn&& fn) {
    return tls ? fn(*tls_stream) : fn(*stream);
  }
};

HttpClient::HttpClient(const std::string& base_url, std::string user_agent, const std::string& ca_file)
    : impl_(std::make_unique<Impl>()) {
  impl_->user_agent = user_agent.empty() ? std::string("spillway-agent/" SPILLWAY_VERSION) : std::move(user_agent);
  std::string rest;
  if (base_url.rfind("http://", 0) == 0) {
    rest = base_url.substr(7);
  } else if (base_url.rfind("https://", 0) == 0) {
    rest = base_url.substr(8);
    impl_->tls = true;
  } else {
    throw std::invalid_argument("--api must be an http://HOST:PORT or https://HOST:PORT URL (got " + base_url + ")");
  }
  if (const auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  const auto colon = rest.rfind(':');
  impl_->host = colon == std::string::npos ? rest : rest.substr(0, colon);
  impl_->port = colon == std::string::npos ? (impl_->tls ? "443" : "80") : rest.substr(colon + 1);
  if (impl_->host.empty()) throw std::invalid_argument("--api has no host: " + base_url);
  if (impl_->tls) {
    // The server's certificate must chain to a trusted CA (the system's, or ca_file's) and name the
    // host: no option turns that off.
    impl_->tls_ctx.emplace(ssl::context::tls_client);
    impl_->tls_ctx->set_options(ssl::context::no_sslv2 | ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                                ssl::context::no_tlsv1_1);
    beast::error_code ec;
    if (ca_file.empty()) impl_->tls_ctx->set_default_verify_paths(ec);
    else impl_->tls_ctx->load_verify_file(ca_file, ec);
    if (ec) throw std::invalid_argument("cannot load the CA certificates " + (ca_file.empty() ? std::string("of the system") : ca_file) + ": " + ec.message());
    impl_->tls_ctx->set_verify_mode(ssl::verify_peer);
  }
}

HttpClient::~HttpClient() = default;

HttpClient::Result HttpClient::Call(const std::string& method, const std::string& target, const std::string& bearer,
                                    const std::string& body, std::chrono::milliseconds timeout,
                                    const Headers& headers) {
  return Exchange(method, target, bearer, body, timeout, headers, nullptr);
}

HttpClient::Result HttpClient::Download(const std::string& method, const std::string& target, const std::string& bearer,
                                        std::chrono::milliseconds timeout, const Sink& sink, const Headers& headers) {
  return Exchange(method, target, bearer, "", timeout, headers, &sink);
}

HttpClient::Result HttpClient::Exchange(const std::string& method, const std::string& target, const std::string& bearer,
                                        const std::string& body, std::chrono::milliseconds timeout,
                                        const Headers& headers, const Sink* sink) {
  auto& d = *impl_;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool fresh = !d.Connected();
    if (fresh) {
      tcp::resolver resolver(d.ioc);
      beast::error_code ec;
      const auto endpoints = resolver.resolve(d.host, d.port, ec);
      if (ec) throw HttpError("cannot resolve " + d.host + ": " + ec.message());
      if (d.tls) {
        d.tls_stream.emplace(d.ioc, *d.tls_ctx);
        d.tls_stream->set_verify_callback(ssl::host_name_verification(d.host));
        // SNI, so a server with several names picks this one's certificate.
        if (!SSL_set_tlsext_host_name(d.tls_stream->native_handle(), d.host.c_str())) {
          d.Drop();
          throw HttpError("cannot set the TLS server name " + d.host);
        }
      } else {
        d.stream.emplace(d.ioc);
      }
      d.Tcp().expires_after(timeout);
      ec = d.RunOp([&](auto handler) {
        d.Tcp().async_connect(endpoints, [handler](beast::error_code e, const tcp::endpoint&) mutable { handler(e, 0); });
      });
      if (!ec && d.tls)
        ec = d.RunOp([&](auto handler) {
          d.tls_stream->async_handshake(ssl::stream_base::client, [handler](beast::error_code e) mutable { handler(e, 0); });
        });
      if (ec) {
        d.Drop();
        throw HttpError("cannot connect to " + d.host + ":" + d.port + ": " + ec.message());
      }
      d.buffer.clear();
    }
    bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(method), target, 11};
    req.set(bhttp::field::host, d.host);
    req.set(bhttp::field::user_agent, d.user_agent);
    for (const auto& [name, value] : headers) req.set(name, value);
    if (!bearer.empty()) req.set(bhttp::field::authorization, "Bearer " + bearer);
    if (!body.empty()) req.set(bhttp::field::content_type, "application/json");
    req.body() = body;
    req.keep_alive(true);
    req.prepare_payload();
    d.Tcp().expires_after(timeout);
    auto ec = d.RunOp([&](auto handler) { d.With([&](auto& s) { bhttp::async_write(s, req, handler); }); });
    if (sink && !ec) {
      // The head, then the body through a fixed buffer into the sink, each read under the deadline.
      bhttp::response_parser<bhttp::buffer_body> parser;
      parser.body_limit(boost::none);
      ec = d.RunOp([&](auto handler) { d.With([&](auto& s) { bhttp::async_read_header(s, d.buffer, parser, handler); }); });
      if (!ec && parser.get().result_int() / 100 == 2) {
        const bool keep = parser.get().keep_alive();
        Result out{static_cast<int>(parser.get().result_int()), "",
                   std::string(parser.get()[bhttp::field::content_type])};
        std::vector<char> chunk(64 * 1024);
        while (!parser.is_done()) {
          parser.get().body().data = chunk.data();
          parser.get().body().size = chunk.size();
          d.Tcp().expires_after(timeout);
          ec = d.RunOp([&](auto handler) { d.With([&](auto& s) { bhttp::async_read(s, d.buffer, parser, handler); }); });
          if (ec == bhttp::error::need_buffer) ec = {};
          if (ec) {
            d.Drop();
            throw HttpError(method + " " + target + ": the response was cut off: " + ec.message());
          }
          (*sink)(std::string_view(chunk.data(), chunk.size() - parser.get().body().size));
        }
        if (!keep) d.Drop();
        return out;
      }
      if (!ec) {  // not a success: its (small) body whole, as Call reads it
        bhttp::response_parser<bhttp::string_body> whole(std::move(parser));
        ec = d.RunOp([&](auto handler) { d.With([&](auto& s) { bhttp::async_read(s, d.buffer, whole, handler); }); });
        if (!ec) {
          if (!whole.get().keep_alive()) d.Drop();
          return {static_cast<int>(whole.get().result_int()), std::move(whole.get().body()),
                  std::string(whole.get()[bhttp::field::content_type])};
        }
      }
    }
    bhttp::response<bhttp::string_body> res;
    if (!sink && !ec)
      ec = d.RunOp([&](auto handler) { d.With([&](auto& s) { bhttp::async_read(s, d.buffer, res, handler); }); });
    if (ec) {
      d.Drop();
      // A kept-alive connection the server closed meanwhile: retry once on a new one.
      if (!fresh && attempt == 0 && ec != beast::error::timeout) continue;
      throw HttpError(method + " " + target + ": " + ec.message());
    }
    if (!res.keep_alive()) d.Drop();
    return {static_cast<int>(res.result_int()), std::move(res.body()), std::string(res[bhttp::field::content_type])};
  }
  throw HttpError(method + " " + target + ": connection failed");
}

}  // namespace spillway::agent
