#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spillway::agent {

struct HttpError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A keep-alive HTTP/1.1 client (TLS for https://) for one apiserver, one request at a time, each with a deadline.
// Network failures throw HttpError; the next call reconnects. Used by the agent, the fleet
// simulator and the `spillway` CLI.
class HttpClient {
 public:
  // "http://host:port" or "https://host:port"; `user_agent` names the program ("spillway-agent/0.1.0").
  // Over https the server's certificate must chain to the system's CAs, or to those in `ca_file`
  // (PEM) when given, and name the host.
  explicit HttpClient(const std::string& base_url, std::string user_agent = "", const std::string& ca_file = "");
  ~HttpClient();
  struct Result {
    int status = 0;
    std::string body;
    std::string content_type;
  };
  using Headers = std::vector<std::pair<std::string, std::string>>;
  Result Call(const std::string& method, const std::string& target, const std::string& bearer,
              const std::string& body, std::chrono::milliseconds timeout, const Headers& headers = {});
  // The same, a successful (2xx) response's body handed to `sink` a piece at a time as it arrives
  // (an export of any size; Result::body stays empty), `timeout` then bounding each wait for more
  // rather than the whole. Any other response's body is read whole into Result::body, as Call's.
  // A body cut off before its end throws HttpError (what was handed over is not all of it).
  using Sink = std::function<void(std::string_view)>;
  Result Download(const std::string& method, const std::string& target, const std::string& bearer,
                  std::chrono::milliseconds timeout, const Sink& sink, const Headers& headers = {});

 private:
  Result Exchange(const std::string& method, const std::string& target, const std::string& bearer,
                  const std::string& body, std::chrono::milliseconds timeout, const Headers& headers, const Sink* sink);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spillway::agent
