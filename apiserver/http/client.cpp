#include "apiserver/http/client.hpp"

#include <optional>

#include "apiserver/http/beast.hpp"

namespace spillway::http {
namespace {

using namespace detail;

// Runs one async operation on `ioc` to completion; the stream's own deadline bounds it.
template <class Start>
beast::error_code RunOp(net::io_context& ioc, Start&& start) {
  beast::error_code result = net::error::operation_aborted;
  start([&](beast::error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

template <class Stream>
OutboundResult Exchange(net::io_context& ioc, Stream& stream, beast::tcp_stream& lowest, const OutboundRequest& r,
                        Millis timeout) {
  bhttp::request<bhttp::string_body> req{bhttp::verb::post, r.target, 11};
  const bool default_port = (r.scheme == "https" && r.port == "443") || (r.scheme == "http" && r.port == "80");
  const std::string host = r.host.find(':') != std::string::npos ? "[" + r.host + "]" : r.host;
  req.set(bhttp::field::host, default_port ? host : host + ":" + r.port);
  req.set(bhttp::field::user_agent, "spillway-webhooks/" SPILLWAY_VERSION);
  req.set(bhttp::field::content_type, "application/json");
  for (const auto& [k, v] : r.headers) req.set(k, v);
  req.body() = r.body;
  req.keep_alive(false);
  req.prepare_payload();
  lowest.expires_after(timeout);
  if (auto ec = RunOp(ioc, [&](auto h) { bhttp::async_write(stream, req, h); })) return {0, "sending: " + ec.message()};
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(64 * 1024);
  auto ec = RunOp(ioc, [&](auto h) { bhttp::async_read(stream, buffer, parser, h); });
  if (ec == bhttp::error::body_limit) return {static_cast<int>(parser.get().result_int()), ""};
  if (ec) return {0, "reading the response: " + ec.message()};
  return {static_cast<int>(parser.get().result_int()), ""};
}

}  // namespace

OutboundResult Post(const OutboundRequest& r, Millis timeout, const std::string& ca_file) {
  try {
    net::io_context ioc;
    tcp::resolver resolver(ioc);
    tcp::resolver::results_type endpoints;
    auto ec = RunOp(ioc, [&](auto h) {
      resolver.async_resolve(r.host, r.port, [h, &endpoints](beast::error_code e, tcp::resolver::results_type res) mutable {
        endpoints = std::move(res);
        h(e);
      });
    });
    if (ec) return {0, "resolving " + r.host + ": " + ec.message()};
    if (r.scheme == "http") {
      beast::tcp_stream plain(ioc);
      plain.expires_after(timeout);
      ec = RunOp(ioc, [&](auto h) { plain.async_connect(endpoints, [h](beast::error_code e, const tcp::endpoint&) mutable { h(e); }); });
      if (ec) return {0, "connecting: " + ec.message()};
      return Exchange(ioc, plain, plain, r, timeout);
    }
    ssl::context ctx(ssl::context::tls_client);
    ctx.set_default_verify_paths();
    if (!ca_file.empty()) ctx.load_verify_file(ca_file);
    ctx.set_verify_mode(ssl::verify_peer);
    beast::ssl_stream<beast::tcp_stream> stream(ioc, ctx);
    if (!SSL_set_tlsext_host_name(stream.native_handle(), r.host.c_str())) return {0, "setting the TLS server name"};
    stream.set_verify_callback(ssl::host_name_verification(r.host));
    auto& lowest = beast::get_lowest_layer(stream);
    lowest.expires_after(timeout);
    ec = RunOp(ioc, [&](auto h) { lowest.async_connect(endpoints, [h](beast::error_code e, const tcp::endpoint&) mutable { h(e); }); });
    if (ec) return {0, "connecting: " + ec.message()};
    ec = RunOp(ioc, [&](auto h) { stream.async_handshake(ssl::stream_base::client, h); });
    if (ec) return {0, "TLS handshake: " + ec.message()};
    return Exchange(ioc, stream, lowest, r, timeout);
  } catch (const std::exception& e) {
    return {0, e.what()};
  }
}

}  // namespace spillway::http
