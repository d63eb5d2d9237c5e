#pragma once
#include <map>
#include <string>
#include <vector>

#include "apiserver/context.hpp"

namespace spillway {

enum class Body { kNone, kRequired, kOptional };

// One row of the route table: every route declares who may call it. The auth and BOLA tests
// iterate this same table.
struct Route {
  std::string method;
  std::string pattern;  // "/v1/tenants/{id}"
  unsigned roles;       // Role bits; kUnauthenticated for public routes
  Handler handler;
  Body body = Body::kNone;
  std::string tenant_param = {};  // path parameter naming a tenant a member must own, if any
  // Takes an Idempotency-Key: the first answer is stored with the change it made, in one
  // transaction, and replayed to a retry with the same key and body (apiserver/idempotency.cpp).
  bool idempotent = false;
  // A short read (one indexed row or page, no long poll): run on the io thread that parsed it, on a
  // connection lent by the pool (Database::TakeInline), so it costs no thread hand-off.
  bool inline_read = false;
  // Also has a non-blocking form (context.hpp, AsyncRead), used when the caller's key is in the key
  // cache and a non-blocking connection is idle; otherwise the route runs as above.
  const AsyncRead* async_read = nullptr;
  // Also has a path that needs no database connection (context.hpp, FastCall), tried first when
  // the caller's key is in the key cache: heartbeats repeating the last report, sample batches.
  FastPath fast_path = nullptr;
  // An agent's heartbeat: refused for want of a connection (the pool full), its host still counts
  // as heard, so overload never marks a host down (HeartbeatRecorder::RecordAlive).
  bool heard_when_refused = false;
};

class Router {
 public:
  explicit Router(std::vector<Route> routes);
  struct Match {
    const Route* route = nullptr;
    std::map<std::string, std::string> params;
    std::vector<std::string> allowed;  // methods of routes matching the path, when route is null
  };
  // HEAD finds the GET route of the path (RFC 9110 §9.3.2: answered as GET, without a body).
  Match Find(const std::string& method, const std::string& path) const;
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
  std::vector<std::vector<std::string>> segments_;
};

std::vector<std::string> SplitPath(const std::string& path);

}  // namespace spillway
