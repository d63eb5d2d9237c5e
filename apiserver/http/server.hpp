#pragma once
// The HTTP transport: listeners, sessions and TLS on Boost.Beast, behind a header free of Beast.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "apiserver/http/message.hpp"
#include "core/config.hpp"
#include "core/duration.hpp"

namespace spillway::http {

struct ListenerOptions {
  std::string name;  // "api", "api-tls", "admin": for logs
  HostPort listen;
  bool tls = false;
  std::string cert_file, key_file;
  size_t max_body_bytes = 1 << 20;
  Millis header_timeout{10000}, body_timeout{30000}, idle_timeout{60000};
};

// On an io thread (a Dispatcher's Dispatch): calls `ready` on this same thread once `fd` is
// readable (false: the wait failed), without blocking it meanwhile. False when not called on an
// io thread: then nothing is registered.
bool WhenReadable(int fd, std::function<void(bool readable)> ready);
// On an io thread: runs `fn` on this same thread after the handlers ready now (so work that
// several of them queue can be done once). False when not called on an io thread.
bool PostHere(std::function<void()> fn);

class Runtime {
 public:
  explicit Runtime(int io_threads);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Binds now (std::runtime_error names the address on failure); serves once Run starts.
  // Returns the bound port (useful with port 0).
  std::uint16_t AddListener(const ListenerOptions& options, Dispatcher& dispatcher);
  // Serves until SIGINT or SIGTERM (or RequestStop), then refuses new connections, lets requests
  // in flight finish (at most shutdown_timeout), closes idle connections and returns.
  void Run(Millis shutdown_timeout);
  void RequestStop();
  bool Draining() const;
  // Runs when the drain begins (before Run's wait): e.g. wake long polls so they answer now.
  void OnDrain(std::function<void()> hook);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spillway::http
