#pragma once
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

namespace spillway::agent {

struct HttpError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A keep-alive HTTP/1.1 client for one apiserver, one request at a time, each with a deadline.
// Network failures throw HttpError; the next call reconnects.
class HttpClient {
 public:
  explicit HttpClient(const std::string& base_url);  // "http://host:port"
  ~HttpClient();
  struct Result {
    int status = 0;
    std::string body;
  };
  Result Call(const std::string& method, const std::string& target, const std::string& bearer,
              const std::string& body, std::chrono::milliseconds timeout);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spillway::agent
