#pragma once
// The one private header with Beast/Asio aliases (as Beast's own examples do). Only apiserver/http
// and the agent's HTTP client include it.
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace spillway::http::detail {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
}  // namespace spillway::http::detail
