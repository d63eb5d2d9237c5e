#include "agent/http_client.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <optional>

namespace spillway::agent {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

struct HttpClient::Impl {
  std::string host, port, user_agent;
  net::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

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
};

HttpClient::HttpClient(const std::string& base_url, std::string user_agent) : impl_(std::make_unique<Impl>()) {
  impl_->user_agent = user_agent.empty() ? std::string("spillway-agent/" SPILLWAY_VERSION) : std::move(user_agent);
  const std::string prefix = "http://";
  if (base_url.rfind(prefix, 0) != 0)
    throw std::invalid_argument("--api must be an http://HOST:PORT URL (got " + base_url + ")");
  std::string rest = base_url.substr(prefix.size());
  if (const auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  const auto colon = rest.rfind(':');
  impl_->host = colon == std::string::npos ? rest : rest.substr(0, colon);
  impl_->port = colon == std::string::npos ? "80" : rest.substr(colon + 1);
  if (impl_->host.empty()) throw std::invalid_argument("--api has no host: " + base_url);
}

HttpClient::~HttpClient() = default;

HttpClient::Result HttpClient::Call(const std::string& method, const std::string& target, const std::string& bearer,
                                    const std::string& body, std::chrono::milliseconds timeout,
                                    const Headers& headers) {
  auto& d = *impl_;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool fresh = !d.stream;
    if (!d.stream) {
      tcp::resolver resolver(d.ioc);
      beast::error_code ec;
      const auto endpoints = resolver.resolve(d.host, d.port, ec);
      if (ec) throw HttpError("cannot resolve " + d.host + ": " + ec.message());
      d.stream.emplace(d.ioc);
      d.stream->expires_after(timeout);
      ec = d.RunOp([&](auto handler) {
        d.stream->async_connect(endpoints, [handler](beast::error_code e, const tcp::endpoint&) mutable { handler(e, 0); });
      });
      if (ec) {
        d.stream.reset();
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
    d.stream->expires_after(timeout);
    auto ec = d.RunOp([&](auto handler) { bhttp::async_write(*d.stream, req, handler); });
    bhttp::response<bhttp::string_body> res;
    if (!ec) ec = d.RunOp([&](auto handler) { bhttp::async_read(*d.stream, d.buffer, res, handler); });
    if (ec) {
      d.stream.reset();
      // A kept-alive connection the server closed meanwhile: retry once on a new one.
      if (!fresh && attempt == 0 && ec != beast::error::timeout) continue;
      throw HttpError(method + " " + target + ": " + ec.message());
    }
    if (!res.keep_alive()) d.stream.reset();
    return {static_cast<int>(res.result_int()), std::move(res.body()), std::string(res[bhttp::field::content_type])};
  }
  throw HttpError(method + " " + target + ": connection failed");
}

}  // namespace spillway::agent
