#pragma once
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "apiserver/http/message.hpp"
#include "apiserver/router.hpp"
#include "apiserver/settings.hpp"
#include "core/clock.hpp"
#include "core/config.hpp"
#include "core/db_fwd.hpp"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace spillway {
class SecretBox;

class Database;
class Metrics;
class AssignmentNotifier;
class KeyCache;
namespace metering {
class Ingestor;
}
class HeartbeatRecorder;
class RateLimiter;
struct FleetMetrics;
struct FleetSettings;

// The route table: every public API route with the roles that may call it.
std::vector<Route> ApiRoutes();
// apiserver/openapi.yaml, compiled in.
const std::string& OpenApiDocument();

// Serves the public API: routes, authenticates and runs each request's handler on a database
// worker; logs one JSON line and records metrics per response.
class ApiDispatcher : public http::Dispatcher {
 public:
  ApiDispatcher(const Config& config, const ServerSettings& server, const FleetSettings& fleet, Database& db, Metrics& metrics, const Clock& clock,
                FleetMetrics* fleet_metrics = nullptr, AssignmentNotifier* notifier = nullptr,
                KeyCache* key_cache = nullptr, HeartbeatRecorder* heartbeats = nullptr,
                metering::Ingestor* ingest = nullptr, const SecretBox* secrets = nullptr);
  ~ApiDispatcher() override;
  void Dispatch(http::Request request, http::Responder respond) override;
  // 100 only once the route exists and the key may call it.
  void Expect(const http::Request& head, http::Responder respond) override;
  void Finished(const http::Request& request, const http::Response& response, double seconds) override;
  // An agent's long poll: GET with a wait (GET /v1/agent/hosts/{id}/assignments?version=&wait=).
  bool MayHold(const http::Request& request) const override;
  // Billing's settings and metrics, for its routes (a close through the API is counted as the
  // leader's are). Set before serving.
  void SetBilling(Billing* billing) { billing_ = billing; }

 private:
  // Who calls, and whether they may call this route: throws ApiError 401/403 otherwise.
  Principal Authorize(Session& conn, const Route& route, const http::Request& request);
  // The route's fast path (Route::fast_path), for a caller whose key is in the key cache and a
  // JSON body. False: take the usual path.
  bool TryFastPath(const http::Request& request, const Route& route, http::Responder& respond,
                   const std::optional<Principal>& principal);
  void NoteRefusedHeartbeat(const http::Request& request);
  // A route with an async_read, from a key in the key cache: the statement is sent on a
  // non-blocking connection and answered on this io thread when PostgreSQL's answer arrives (the
  // thread serves others meanwhile). False, having used nothing it was given: take the usual path.
  struct PendingRead;
  bool StartAsyncRead(http::Request& request, const Route& route, std::map<std::string, std::string>& params,
                      http::Responder& respond, const std::optional<Principal>& principal);

 public:
  struct ReadPipeline;  // one per io thread (app.cpp)

 private:
  ReadPipeline* Pipeline();  // this io thread's, with a connection; nullptr when none can be had
  void FlushPipeline(ReadPipeline& p);
  void AwaitPipeline(ReadPipeline& p);  // calls OnPipelineReadable when its socket is readable
  void OnPipelineReadable(ReadPipeline& p, bool readable);
  void DrainPipeline(ReadPipeline& p);  // hands over the answers libpq holds; waits for more if due
  void FinishRead(std::shared_ptr<PendingRead> read);
  void FailPipeline(ReadPipeline& p);
  std::mutex pipelines_mu_;
  std::vector<std::unique_ptr<ReadPipeline>> pipelines_;
  // The route for a request, or the 400/404/405 answer to send instead.
  const Route* Match(const http::Request& request, std::map<std::string, std::string>* params,
                     http::Response* refusal) const;
  struct Outcome {
    http::Response response;
    std::string long_poll_host;  // set: wait for this host's assignments to change, then run again
    std::int64_t long_poll_ms = 0;
    bool statement_timed_out = false;  // PostgreSQL cancelled a statement (statement_timeout)
    std::function<void(Session&, http::BodyStream&)> stream_body;  // makes response.stream's body
  };
  Outcome Run(Session& conn, const Route& route, const std::map<std::string, std::string>& params,
              const http::Request& request, bool long_poll_retry);
  // Sends a streamed reply's head, then runs its producer on this worker's connection.
  void Stream(Session& conn, Outcome out, const http::Request& request, const http::Responder& respond);
  void Submit(const Route* route, std::shared_ptr<http::Request> request,
              std::shared_ptr<std::map<std::string, std::string>> params, http::Responder respond, bool retry);
  const Config& config_;
  const FleetSettings& fleet_;
  Database& db_;
  const Clock& clock_;
  FleetMetrics* fleet_metrics_;
  AssignmentNotifier* notifier_;
  KeyCache* key_cache_;
  HeartbeatRecorder* heartbeats_;
  metering::Ingestor* ingest_;
  const SecretBox* secrets_;
  Billing* billing_ = nullptr;
  Router router_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* durations_;
  prometheus::Counter* async_answered_;
  prometheus::Counter* async_fell_back_;
  std::mutex series_mu_;
  std::unordered_map<std::string, std::pair<prometheus::Counter*, prometheus::Histogram*>> series_;
  const ServerSettings& server_;
  std::unique_ptr<RateLimiter> limiter_;  // null when [ratelimit] is off
  // A tenant's key on a limited route: its token, or the 429 to send (ApiError) when none is left.
  void TakeRateToken(const Principal& principal, const Route& route);
  std::uint64_t id_;  // tells this dispatcher's per-thread pipelines from another's
};

// The admin listener: /metrics, /healthz, /readyz (database reachable and schema current).
class AdminDispatcher : public http::Dispatcher {
 public:
  AdminDispatcher(Database& db, Metrics& metrics, std::function<bool()> draining);
  void Dispatch(http::Request request, http::Responder respond) override;
  void Finished(const http::Request&, const http::Response&, double) override {}

 private:
  Database& db_;
  Metrics& metrics_;
  std::function<bool()> draining_;
};

}  // namespace spillway
