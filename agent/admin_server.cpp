#include "agent/admin_server.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <thread>

#include "core/log.hpp"

namespace spillway::agent {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

struct AdminServer::Impl {
  net::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::function<std::string()> metrics;
  std::thread thread;

  void Accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec) return;  // closed: stopping
      Serve(std::move(socket));
      Accept();
    });
  }

  // One request, answered and closed. Reads under a deadline so a silent client cannot stall it.
  void Serve(tcp::socket socket) {
    auto stream = std::make_shared<beast::tcp_stream>(std::move(socket));
    auto buffer = std::make_shared<beast::flat_buffer>();
    auto request = std::make_shared<bhttp::request<bhttp::empty_body>>();
    stream->expires_after(std::chrono::seconds(5));
    bhttp::async_read(*stream, *buffer, *request, [this, stream, buffer, request](beast::error_code ec, std::size_t) {
      if (ec) return;
      auto response = std::make_shared<bhttp::response<bhttp::string_body>>();
      response->version(request->version());
      response->keep_alive(false);
      const std::string target(request->target());
      if (request->method() != bhttp::verb::get) {
        response->result(bhttp::status::method_not_allowed);
        response->set(bhttp::field::allow, "GET");
      } else if (target == "/metrics") {
        response->set(bhttp::field::content_type, "text/plain; version=0.0.4");
        response->body() = metrics();
      } else if (target == "/healthz") {
        response->set(bhttp::field::content_type, "application/json");
        response->body() = "{\"status\":\"ok\"}\n";
      } else {
        response->result(bhttp::status::not_found);
      }
      response->prepare_payload();
      bhttp::async_write(*stream, *response, [stream, response](beast::error_code, std::size_t) {
        beast::error_code ignored;
        stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      });
    });
  }
};

AdminServer::AdminServer(const HostPort& listen, std::function<std::string()> metrics_text)
    : impl_(std::make_unique<Impl>()) {
  impl_->metrics = std::move(metrics_text);
  beast::error_code ec;
  const auto address = net::ip::make_address(listen.host == "localhost" ? "127.0.0.1" : listen.host, ec);
  if (ec) throw std::runtime_error("--admin-listen " + listen.host + ": not an IP address");
  const tcp::endpoint endpoint(address, listen.port);
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("--admin-listen " + listen.host + ":" + std::to_string(listen.port) + ": " + ec.message());
}

AdminServer::~AdminServer() { Stop(); }

void AdminServer::Start() {
  impl_->Accept();
  impl_->thread = std::thread([this] { impl_->ioc.run(); });
}

void AdminServer::Stop() {
  if (!impl_->thread.joinable()) return;
  net::post(impl_->ioc, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->ioc.stop();
  impl_->thread.join();
}

std::uint16_t AdminServer::port() const { return impl_->acceptor.local_endpoint().port(); }

}  // namespace spillway::agent
