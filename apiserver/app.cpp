#include "apiserver/app.hpp"

#include <boost/json.hpp>

#include <atomic>
#include <deque>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "accounts/console_sessions.hpp"
#include "apiserver/auth/api_keys.hpp"
#include "apiserver/console.hpp"
#include "apiserver/rate_limit.hpp"
#include "apiserver/errors.hpp"
#include "metering/ingest.hpp"
#include "apiserver/idempotency.hpp"
#include "provisioning/heartbeats.hpp"
#include "apiserver/http/server.hpp"
#include "core/db.hpp"
#include "core/pg_async.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"
#include "core/log.hpp"
#include "core/metrics.hpp"
#include "core/migrate.hpp"
#include "core/text.hpp"
#include "apiserver/notifier.hpp"

namespace spillway {
namespace {

bool IsJsonContentType(const std::string& value) {
  std::string v = value.substr(0, value.find(';'));
  while (!v.empty() && v.back() == ' ') v.pop_back();
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  return v == "application/json";
}

bool HasBodyMethod(const std::string& m) { return m == "POST" || m == "PUT" || m == "PATCH"; }

// Text from the request line is checked before anything reads it: a path or query that is not
// clean UTF-8 (invalid bytes, NUL, control characters) is refused here, never passed to a handler,
// the database or a log line, and never quoted back.
std::string EdgeProblem(const http::Request& r) {
  if (!IsCleanText(r.path)) return "the path is not valid UTF-8 text without control characters";
  for (const auto& [k, v] : r.query) {
    if (!IsCleanText(k)) return "a query parameter's name is not valid UTF-8 text without control characters";
    if (!IsCleanText(v)) return "query parameter " + k + " is not valid UTF-8 text without control characters";
  }
  return "";
}

}  // namespace

namespace {
// A handler's reply as the response to send.
http::Response ResponseOf(Reply reply) {
  http::Response out;
  out.status = reply.status;
  if (!reply.content_type.empty()) {
    out.content_type = std::move(reply.content_type);
    out.body = std::move(reply.raw_body);
    out.headers = std::move(reply.headers);
    return out;
  }
  out.body = ToJson(reply.body);
  out.body += '\n';  // so that a curl in a terminal leaves the prompt on its own line
  out.headers = std::move(reply.headers);
  return out;
}

std::atomic<std::uint64_t> next_dispatcher_id{1};  // see ApiDispatcher::Pipeline
}  // namespace

ApiDispatcher::ApiDispatcher(const Config& config, const ServerSettings& server, const FleetSettings& fleet, Database& db, Metrics& metrics,
                             const Clock& clock,
                             FleetMetrics* fleet_metrics, AssignmentNotifier* notifier, KeyCache* key_cache,
                             HeartbeatRecorder* heartbeats, metering::Ingestor* ingest, const SecretBox* secrets)
    : config_(config),
      fleet_(fleet),
      db_(db),
      clock_(clock),
      fleet_metrics_(fleet_metrics),
      notifier_(notifier),
      key_cache_(key_cache),
      heartbeats_(heartbeats),
      ingest_(ingest),
      secrets_(secrets),
      router_(ApiRoutes()),
      server_(server),
      id_(next_dispatcher_id++) {
  requests_ = &prometheus::BuildCounter()
                   .Name("http_requests_total")
                   .Help("HTTP requests answered, by route pattern, method and status code")
                   .Register(metrics.registry());
  if (server.rate_limits.Any()) limiter_ = std::make_unique<RateLimiter>(server.rate_limits, &metrics.registry());
  durations_ = &prometheus::BuildHistogram()
                    .Name("http_request_duration_seconds")
                    .Help("Time from a request's first byte to its response written, by route pattern")
                    .Register(metrics.registry());
  auto& reads = prometheus::BuildCounter()
                    .Name("spillway_async_reads_total")
                    .Help("Reads sent without blocking on an io thread, by outcome: answered there, or run again "
                          "through a database worker (the connection broke, or the statement failed)")
                    .Register(metrics.registry());
  async_answered_ = &reads.Add({{"result", "answered"}});
  async_fell_back_ = &reads.Add({{"result", "fell_back"}});
  std::vector<const Statement*> statements;
  for (const auto& r : router_.routes())
    if (r.async_read) statements.push_back(&r.async_read->statement());
  db_.EnableAsync(std::move(statements));
}

// A read in flight on its io thread's pipeline, until PostgreSQL's answer arrives.
struct ApiDispatcher::PendingRead {
  Principal principal;
  std::map<std::string, std::string> params;
  http::Request request;
  http::Responder respond;
  const Route* route;
  std::optional<PgResult> result;
};

// One io thread's non-blocking connection in pipeline mode: the reads it sent, in order, each
// batch ended by a sync (a null entry). Used by that thread alone.
struct ApiDispatcher::ReadPipeline {
  // Shared with a wait in progress on its socket, so a connection dropped meanwhile is closed only
  // after that wait has let go of the descriptor.
  std::shared_ptr<PgAsyncConnection> conn;
  std::deque<std::shared_ptr<PendingRead>> in_flight;
  bool flush_posted = false, reading = false;
};

namespace {
// This io thread's pipeline, and which dispatcher it belongs to (by a number never reused, so a
// pipeline of a dispatcher since destroyed is never taken for another's).
thread_local std::uint64_t tl_pipeline_owner = 0;
thread_local ApiDispatcher::ReadPipeline* tl_pipeline = nullptr;
}  // namespace

ApiDispatcher::~ApiDispatcher() = default;

ApiDispatcher::ReadPipeline* ApiDispatcher::Pipeline() {
  if (tl_pipeline_owner != id_) {
    tl_pipeline_owner = id_;
    tl_pipeline = nullptr;
  }
  if (tl_pipeline && tl_pipeline->conn) return tl_pipeline;
  auto conn = db_.TakeAsync();
  if (!conn) return nullptr;
  if (!conn->EnterPipeline()) {
    conn.reset();
    db_.ReturnAsync(nullptr);
    return nullptr;
  }
  if (!tl_pipeline) {
    std::lock_guard lk(pipelines_mu_);
    pipelines_.push_back(std::make_unique<ReadPipeline>());
    tl_pipeline = pipelines_.back().get();
  }
  tl_pipeline->conn = std::shared_ptr<PgAsyncConnection>(std::move(conn));
  return tl_pipeline;
}

bool ApiDispatcher::StartAsyncRead(http::Request& request, const Route& route,
                                   std::map<std::string, std::string>& params, http::Responder& respond,
                                   const std::optional<Principal>& principal) {
  if (!principal || !(route.roles & principal->role_bit)) return false;  // the full path answers
  std::vector<std::string> values;
  try {
    values = route.async_read->params(*principal, params, request.query);
  } catch (...) {
    http::Response r = ErrorResponseForCurrent(request.request_id, route.pattern);
    r.route = route.pattern;
    respond(std::move(r));
    return true;
  }
  ReadPipeline* p = Pipeline();
  if (!p) return false;
  if (!p->conn->Queue(route.async_read->statement(), values)) {
    FailPipeline(*p);
    return false;
  }
  p->in_flight.push_back(std::make_shared<PendingRead>(
      PendingRead{*principal, std::move(params), std::move(request), std::move(respond), &route, std::nullopt}));
  // The batch is sent once the handlers ready on this thread have had their turn: reads parsed
  // together go to PostgreSQL in one write.
  if (!p->flush_posted) {
    p->flush_posted = true;
    http::PostHere([this, p] { FlushPipeline(*p); });
  }
  return true;
}

void ApiDispatcher::FlushPipeline(ReadPipeline& p) {
  p.flush_posted = false;
  if (!p.conn) return;
  if (!p.conn->Sync()) {
    FailPipeline(p);
    return;
  }
  p.in_flight.push_back(nullptr);  // the batch's sync
  // Sending a batch too large for the socket's buffers takes in answers meanwhile: hand over what
  // is already here before waiting on the socket, which will not show it.
  DrainPipeline(p);
}

void ApiDispatcher::AwaitPipeline(ReadPipeline& p) {
  p.reading = true;
  auto conn = p.conn;
  if (!http::WhenReadable(conn->socket(), [this, &p, conn](bool readable) {
        if (conn != p.conn) return;  // dropped meanwhile: its reads went to the workers
        OnPipelineReadable(p, readable);
      })) {
    p.reading = false;
    FailPipeline(p);
  }
}

void ApiDispatcher::OnPipelineReadable(ReadPipeline& p, bool readable) {
  p.reading = false;
  if (!p.conn || !readable || !p.conn->Consume()) {
    FailPipeline(p);
    return;
  }
  DrainPipeline(p);
}

void ApiDispatcher::DrainPipeline(ReadPipeline& p) {
  while (!p.in_flight.empty()) {
    std::optional<PgResult> result;
    const auto event = p.conn->Next(&result);
    if (event == PgAsyncConnection::Event::kNothingYet) break;
    auto& front = p.in_flight.front();
    if (event == PgAsyncConnection::Event::kSync) {
      if (front) {  // answers out of step with what was sent: trust none of it
        FailPipeline(p);
        return;
      }
      p.in_flight.pop_front();
    } else if (!front) {
      FailPipeline(p);
      return;
    } else if (event == PgAsyncConnection::Event::kResult) {
      if (!front->result) front->result = std::move(result);
    } else {  // the statement's answer is complete
      auto read = std::move(front);
      p.in_flight.pop_front();
      FinishRead(std::move(read));
    }
  }
  if (!p.in_flight.empty() && p.conn && !p.reading) AwaitPipeline(p);
}

void ApiDispatcher::FinishRead(std::shared_ptr<PendingRead> read) {
  if (!read->result || !read->result->ok()) {
    // A read changes nothing: a worker runs it again and answers as it always does (a statement
    // timeout, a batch aborted by another read's error, a restarted PostgreSQL).
    async_fell_back_->Increment();
    Submit(read->route, std::make_shared<http::Request>(std::move(read->request)),
           std::make_shared<std::map<std::string, std::string>>(std::move(read->params)), std::move(read->respond),
           false);
    return;
  }
  async_answered_->Increment();
  http::Response out;
  try {
    out = ResponseOf(read->route->async_read->render(read->principal, read->params, read->request.query, *read->result));
  } catch (...) {
    out = ErrorResponseForCurrent(read->request.request_id, read->route->pattern);
  }
  out.route = read->route->pattern;
  read->respond(std::move(out));
}

void ApiDispatcher::FailPipeline(ReadPipeline& p) {
  // The connection's state is unknown: drop it (a worker opens another) and send every read it
  // held to the workers.
  if (p.conn) {
    p.conn.reset();
    db_.ReturnAsync(nullptr);  // counted as missing: a worker opens another
  }
  p.reading = false;
  auto reads = std::move(p.in_flight);
  p.in_flight.clear();
  for (auto& read : reads)
    if (read) {
      read->result.reset();
      FinishRead(std::move(read));
    }
}

const Route* ApiDispatcher::Match(const http::Request& request, std::map<std::string, std::string>* params,
                                  http::Response* refusal) const {
  if (const std::string problem = EdgeProblem(request); !problem.empty()) {
    *refusal = http::ErrorResponse(400, "invalid_parameter", problem, request.request_id);
    return nullptr;
  }
  auto match = router_.Find(request.method, request.path);
  if (match.route) {
    *params = std::move(match.params);
    return match.route;
  }
  if (match.allowed.empty()) {
    *refusal = http::ErrorResponse(404, "not_found", "no route for " + request.path, request.request_id);
    return nullptr;
  }
  std::string allow;
  for (const auto& m : match.allowed) allow += (allow.empty() ? "" : ", ") + m;
  *refusal = http::ErrorResponse(405, "method_not_allowed", request.method + " is not allowed here; allowed: " + allow,
                                 request.request_id);
  refusal->headers.emplace_back("Allow", allow);
  return nullptr;
}

Principal ApiDispatcher::Authorize(Session& conn, const Route& route, const http::Request& request) {
  if (route.roles == kUnauthenticated) return {};
  const std::string authorization = request.Header("authorization");
  const std::string session = authorization.empty() ? SessionCookieOf(request.Header("cookie")) : std::string();
  Principal principal =
      !session.empty()
          ? AuthenticateSession(conn, session, request.method != "GET" && request.method != "HEAD",
                                request.Header("x-csrf-token"))
          : Authenticate(conn, authorization, route.roles & kBootstrap, server_.bootstrap_token, key_cache_);
  if (!(route.roles & principal.role_bit))
    throw ApiError(403, "forbidden",
                   "a key with the " + principal.role + " role may not call " + route.method + " " + route.pattern);
  if (!request.rate_checked) TakeRateToken(principal, route);
  return principal;
}

void ApiDispatcher::TakeRateToken(const Principal& principal, const Route& route) {
  // Agents (host tokens) and the bootstrap token are not limited: a fleet's heartbeats are shed by
  // the overload rules instead (docs/fleet-scale.md), never refused for their rate.
  if (!limiter_ || !IsKeyRole(principal.role_bit) || !(route.roles & kAnyRole)) return;
  const auto refusal = limiter_->Take(principal.key_id, principal.tenant_id);
  if (!refusal) return;
  const std::string who = refusal->scope == "key" ? "this API key" : "this key's tenant";
  ApiError e(429, "rate_limited",
             who + " made more than " + std::to_string(refusal->rate) + " requests a second (bursts of " +
                 std::to_string(refusal->burst) + "): retry after " + std::to_string(refusal->retry_after_s) + " s");
  e.retry_after = std::to_string(refusal->retry_after_s);
  e.headers = {{"RateLimit-Limit", std::to_string(refusal->burst)},
               {"RateLimit-Remaining", "0"},
               {"RateLimit-Reset", std::to_string(refusal->retry_after_s)},
               {"RateLimit-Policy", std::to_string(refusal->burst) + ";w=" +
                                        std::to_string((refusal->burst + refusal->rate - 1) / refusal->rate) + ";scope=" +
                                        refusal->scope}};
  throw e;
}

void ApiDispatcher::Expect(const http::Request& head, http::Responder respond) {
  std::map<std::string, std::string> params;
  http::Response refusal;
  const Route* route = Match(head, &params, &refusal);
  if (!route) {
    respond(std::move(refusal));
    return;
  }
  http::Response proceed;
  proceed.status = 100;
  if (route->roles == kUnauthenticated) {
    respond(std::move(proceed));
    return;
  }
  auto request = std::make_shared<http::Request>(head);
  request->rate_checked = true;  // the request itself takes the token, once its body has come
  db_.Submit(Database::Job{
      [this, route, request, respond, proceed](Session& conn) mutable {
        http::Response out = proceed;
        try {
          Authorize(conn, *route, *request);
        } catch (...) {
          out = ErrorResponseForCurrent(request->request_id, route->pattern);
        }
        out.route = route->pattern;
        respond(std::move(out));
      },
      [request, respond, route](const DbUnavailable& e) {
        auto r = ErrorResponseFor(e, request->request_id);
        r.route = route->pattern;
        respond(std::move(r));
      }});
}

bool ApiDispatcher::TryFastPath(const http::Request& request, const Route& route, http::Responder& respond,
                                const std::optional<Principal>& principal) {
  if (!principal || !(route.roles & principal->role_bit)) return false;
  if (!IsJsonContentType(request.Header("content-type"))) return false;
  FastCall call{request, *principal, route.pattern, respond, heartbeats_, ingest_, clock_};
  return route.fast_path(call);
}

void ApiDispatcher::Dispatch(http::Request request, http::Responder respond) {
  if (IsConsolePath(request.path)) {  // static, needs no database
    respond(ConsoleResponse(request));
    return;
  }
  std::map<std::string, std::string> params;
  http::Response refusal;
  const Route* route = Match(request, &params, &refusal);
  if (!route) {
    respond(std::move(refusal));
    return;
  }
  // The caller, from the key cache alone (no database), looked up once for the paths below that
  // need it: the rate limit, the fast path, the non-blocking read.
  std::optional<Principal> cached;
  if (key_cache_ && (route->fast_path || route->async_read || (limiter_ && (route->roles & kAnyRole))))
    cached = AuthenticateFromCache(request.Header("authorization"), *key_cache_);
  if (limiter_ && (route->roles & kAnyRole)) {
    // A key the cache knows is limited here, before any path takes a connection or a worker: a
    // flood of one tenant's requests is refused on the io thread.
    if (const auto& principal = cached; principal && (route->roles & principal->role_bit)) {
      request.rate_checked = true;
      try {
        TakeRateToken(*principal, *route);
      } catch (...) {
        http::Response r = ErrorResponseForCurrent(request.request_id, route->pattern);
        r.route = route->pattern;
        respond(std::move(r));
        return;
      }
    }
  }
  if (route->fast_path && TryFastPath(request, *route, respond, cached)) return;
  if (route->pattern == "/v1/openapi.yaml") {  // static, needs no database
    http::Response r;
    r.content_type = "application/yaml";
    r.body = OpenApiDocument();
    r.route = route->pattern;
    respond(std::move(r));
    return;
  }
  if (route->async_read && StartAsyncRead(request, *route, params, respond, cached)) return;
  if (route->inline_read) {
    if (auto conn = db_.TakeInline()) {
      Outcome out = Run(*conn, *route, params, request, false);
      const bool broke = !conn->is_open();
      db_.ReturnInline(std::move(conn));  // a broken one is replaced by a worker
      // A lent connection that broke (PostgreSQL restarted since it was opened), or a statement cut
      // off by the io thread's short inline_statement_timeout, does not make the read fail: a read
      // changes nothing, so the pool's path runs it again (as the non-blocking path does).
      if (!broke && !out.statement_timed_out) {
        respond(std::move(out.response));
        return;
      }
    }
  }
  Submit(route, std::make_shared<http::Request>(std::move(request)),
         std::make_shared<std::map<std::string, std::string>>(std::move(params)), std::move(respond), false);
}

namespace {
void TrimParked(http::Request& request) {
  std::string authorization = request.Header("authorization");
  request.headers.clear();
  if (!authorization.empty()) request.headers.emplace("authorization", std::move(authorization));
  std::string().swap(request.body);
  std::string().swap(request.target);
}
}  // namespace

void ApiDispatcher::Submit(const Route* route, std::shared_ptr<http::Request> request,
                           std::shared_ptr<std::map<std::string, std::string>> params, http::Responder respond,
                           bool retry) {
  db_.Submit(Database::Job{
      [this, route, request, params, respond, retry](Session& conn) {
        Outcome out = Run(conn, *route, *params, *request, retry);
        if (out.stream_body) {
          Stream(conn, std::move(out), *request, respond);
          return;
        }
        if (out.long_poll_host.empty() || !notifier_) {
          respond(std::move(out.response));
          return;
        }
        // Nothing changed yet: park the request (holding no connection) until the host's
        // assignments change or the wait ends, then answer from a fresh read. What the read needs
        // again is its path, query and credentials: the rest is let go while it waits.
        TrimParked(*request);
        notifier_->Wait(out.long_poll_host, std::chrono::milliseconds(out.long_poll_ms),
                        [this, route, request, params, respond] { Submit(route, request, params, respond, true); });
      },
      [this, request, respond, route](const DbUnavailable& e) {
        if (route->heard_when_refused) NoteRefusedHeartbeat(*request);
        auto r = ErrorResponseFor(e, request->request_id);
        r.route = route->pattern;
        respond(std::move(r));
      }});
}

void ApiDispatcher::Stream(Session& conn, Outcome out, const http::Request& request, const http::Responder& respond) {
  const auto stream = out.response.stream;
  respond(std::move(out.response));
  try {
    out.stream_body(conn, *stream);
    stream->Close(true);
  } catch (const http::ClientGone&) {
    log::Info("streamed response abandoned: the client went away",
              {{"request_id", request.request_id}, {"path", request.path}});
    stream->Close(false);
  } catch (const std::exception& e) {
    log::Error("streamed response failed midway; the connection is cut off",
               {{"request_id", request.request_id}, {"path", request.path}, {"error", e.what()}});
    stream->Close(false);
  }
}

bool ApiDispatcher::MayHold(const http::Request& request) const {
  if (request.method != "GET") return false;
  const auto wait = request.query.find("wait");
  return wait != request.query.end() && !wait->second.empty() && wait->second != "0";
}

void ApiDispatcher::NoteRefusedHeartbeat(const http::Request& request) {
  if (!heartbeats_) return;
  // A refused heartbeat never counts against its host: the host is alive if its token checks out,
  // and if it cannot be told which host it was, the leader waits before judging anyone.
  const auto principal = key_cache_ ? AuthenticateFromCache(request.Header("authorization"), *key_cache_)
                                    : std::optional<Principal>();
  if (principal && principal->role_bit == kHost) heartbeats_->RecordAlive(principal->host_id, clock_.Now());
  else heartbeats_->Refused(clock_.Now());
}

ApiDispatcher::Outcome ApiDispatcher::Run(Session& conn, const Route& route,
                                          const std::map<std::string, std::string>& params,
                                          const http::Request& request, bool long_poll_retry) {
  Outcome outcome;
  http::Response& out = outcome.response;
  try {
    Principal principal = Authorize(conn, route, request);
    boost::json::value body;
    if (HasBodyMethod(request.method) && !request.body.empty()) {
      if (!IsJsonContentType(request.Header("content-type")))
        throw ApiError(415, "unsupported_media_type", "the body must be sent as Content-Type: application/json");
      body = ParseJsonBody(request.body);
    } else if (route.body == Body::kRequired) {
      throw ApiError(400, "body_required", "this request needs a JSON body");
    }
    Ctx ctx{request, params, std::move(body), std::move(principal), conn, config_, clock_, fleet_metrics_,
            long_poll_retry, key_cache_};
    ctx.heartbeats = heartbeats_;
    ctx.fleet = &fleet_;
    ctx.ingest = ingest_;
    ctx.secrets = secrets_;
    ctx.billing = billing_;
    if (!route.tenant_param.empty()) ctx.RequireTenant(ctx.Param(route.tenant_param));
    const std::string idempotency_key = request.Header("idempotency-key");
    Reply reply = route.idempotent && !idempotency_key.empty() ? RunIdempotent(ctx, route.handler, idempotency_key, server_.idempotency_ttl)
                                                               : route.handler(ctx);
    if (!reply.long_poll_host.empty()) {
      outcome.long_poll_host = reply.long_poll_host;
      outcome.long_poll_ms = reply.long_poll_ms;
      return outcome;
    }
    if (reply.stream_body) {
      outcome.stream_body = std::move(reply.stream_body);
      out.content_type = std::move(reply.content_type);
      out.headers = std::move(reply.headers);
      out.status = reply.status;
      out.stream = std::make_shared<http::BodyStream>();
    } else {
      out = ResponseOf(std::move(reply));
    }
  } catch (const pqxx::sql_error& e) {
    outcome.statement_timed_out = e.sqlstate() == "57014";  // query_canceled
    out = ErrorResponseForCurrent(request.request_id, route.pattern);
  } catch (...) {
    out = ErrorResponseForCurrent(request.request_id, route.pattern);
  }
  out.route = route.pattern;
  return outcome;
}

void ApiDispatcher::Finished(const http::Request& request, const http::Response& response, double seconds) {
  // The series for (route, method, code), looked up once: building label maps and bucket lists for
  // prometheus-cpp on every request cost more than the rest of this function.
  const std::string code = std::to_string(response.status);
  std::string series;
  series.reserve(response.route.size() + request.method.size() + code.size() + 2);
  series.append(response.route).append(1, ' ').append(request.method).append(1, ' ').append(code);
  std::pair<prometheus::Counter*, prometheus::Histogram*> m;
  {
    std::lock_guard lk(series_mu_);
    auto it = series_.find(series);
    if (it == series_.end()) {
      auto* counter = &requests_->Add(
          {{"route", response.route}, {"method", request.method}, {"code", code}});
      auto* histogram = &durations_->Add(
          {{"route", response.route}}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                                              0.1, 0.25, 0.5, 1, 2.5, 5, 10});
      it = series_.emplace(std::move(series), std::make_pair(counter, histogram)).first;
    }
    m = it->second;
  }
  m.first->Increment();
  m.second->Observe(seconds);
  // An agent's routine calls (heartbeats, assignments) are thousands a second on a large fleet: at
  // debug, so that the log at info shows requests and events.
  const bool routine = response.status < 400 && response.route.rfind("/v1/agent/", 0) == 0 &&
                       response.route != "/v1/agent/register";
  const auto level = routine ? log::Level::kDebug : log::Level::kInfo;
  if (log::Enabled(level))
    log::Write(level, "request", {{"request_id", request.request_id},
                          {"method", request.method},
                          {"route", response.route},
                          {"path", request.path},
                          {"status", response.status},
                          {"duration_us", static_cast<std::int64_t>(seconds * 1e6)}});
}

AdminDispatcher::AdminDispatcher(Database& db, Metrics& metrics, std::function<bool()> draining)
    : db_(db), metrics_(metrics), draining_(std::move(draining)) {}

void AdminDispatcher::Dispatch(http::Request request, http::Responder respond) {
  auto json = [](int status, boost::json::object o) {
    http::Response r;
    r.status = status;
    r.body = ToJson(o) + "\n";
    return r;
  };
  const bool known = request.path == "/metrics" || request.path == "/healthz" || request.path == "/readyz";
  if (!known) {
    respond(http::ErrorResponse(404, "not_found", "no route for " + request.path, request.request_id));
    return;
  }
  if (request.method != "GET" && request.method != "HEAD") {
    auto r = http::ErrorResponse(405, "method_not_allowed", "only GET and HEAD are allowed here", request.request_id);
    r.headers.emplace_back("Allow", "GET, HEAD");
    respond(std::move(r));
    return;
  }
  if (request.path == "/metrics") {
    http::Response r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = metrics_.Render();
    respond(std::move(r));
  } else if (request.path == "/healthz") {
    respond(json(200, {{"status", "ok"}}));
  } else if (draining_()) {
    respond(json(503, {{"status", "draining"}}));
  } else {
    db_.Submit(Database::Job{
        [respond, json](pqxx::connection& conn) {
          try {
            const auto status = CheckSchema(conn, EmbeddedMigrations());
            if (status.current()) {
              respond(json(200, {{"status", "ready"}, {"database", "ok"}, {"schema", "current"}}));
            } else {
              respond(json(503, {{"status", "not_ready"}, {"database", "ok"}, {"schema", "behind"},
                                 {"pending_migrations", status.pending.size()}}));
            }
          } catch (const std::exception& e) {
            respond(json(503, {{"status", "not_ready"}, {"database", "unreachable"}, {"error", e.what()}}));
          }
        },
        [respond, json](const DbUnavailable& e) {
          respond(json(503, {{"status", "not_ready"}, {"database", e.busy ? "busy" : "unreachable"}}));
        }});
  }
}

}  // namespace spillway
