#include "apiserver/errors.hpp"

#include <pqxx/pqxx>

#include "core/db.hpp"
#include "core/errors.hpp"
#include "core/log.hpp"
#include "protocol/agent.hpp"

namespace spillway {
namespace {
std::string Seconds(Millis d) { return std::to_string(std::max<std::int64_t>(1, (d.count() + 999) / 1000)); }
}  // namespace

http::Response ErrorResponseFor(const ApiError& e, const std::string& request_id) {
  auto r = http::ErrorResponse(e.status, e.code, e.what(), request_id);
  if (!e.retry_after.empty()) r.headers.emplace_back("Retry-After", e.retry_after);
  for (const auto& h : e.headers) r.headers.push_back(h);
  if (e.status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

http::Response ErrorResponseFor(const DbUnavailable& e, const std::string& request_id) {
  auto r = http::ErrorResponse(503, e.code(), e.what(), request_id);
  r.headers.emplace_back("Retry-After", Seconds(e.retry_after));
  return r;
}

http::Response ErrorResponseForCurrent(const std::string& request_id, const std::string& route) {
  try {
    throw;
  } catch (const ApiError& e) {
    return ErrorResponseFor(e, request_id);
  } catch (const protocol::SampleError& e) {
    std::vector<std::pair<std::string, std::vector<std::int64_t>>> lists;
    if (!e.unheld.empty()) lists.push_back({"unheld_sample_indexes", {e.unheld.begin(), e.unheld.end()}});
    if (!e.overlapping.empty())
      lists.push_back({"overlapping_sample_indexes", {e.overlapping.begin(), e.overlapping.end()}});
    return http::ErrorResponse(422, "invalid_sample", e.what(), request_id,
                               {{"sample_index", static_cast<std::int64_t>(e.index)}}, lists);
  } catch (const InvalidInput& e) {
    return http::ErrorResponse(422, "validation_failed", e.what(), request_id);
  } catch (const MalformedJson& e) {
    return http::ErrorResponse(400, "invalid_json", e.what(), request_id);
  } catch (const DbUnavailable& e) {
    return ErrorResponseFor(e, request_id);
  } catch (const pqxx::in_doubt_error& e) {
    // The connection broke while COMMIT was in flight: the change may or may not be in. Not a 500:
    // the server did nothing wrong, and a retry with the same Idempotency-Key finds out which.
    log::Warn("commit outcome unknown: the database connection was lost", {{"request_id", request_id},
                                                                          {"route", route}, {"error", e.what()}});
    auto r = http::ErrorResponse(503, "outcome_unknown",
                                 "the database connection was lost while the change was being committed; it may or "
                                 "may not have been made: retry (with the same Idempotency-Key) to find out",
                                 request_id);
    r.headers.emplace_back("Retry-After", "1");
    return r;
  } catch (const std::exception& e) {
    if (IsUnavailable(e)) {
      log::Warn("database unavailable during request", {{"request_id", request_id}, {"error", e.what()}});
      auto r = http::ErrorResponse(503, "database_unavailable", "the database is unavailable; retry shortly",
                                   request_id);
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    if (IsRetryable(e)) {
      log::Warn("request lost its race too often", {{"request_id", request_id}, {"route", route}, {"error", e.what()}});
      auto r = http::ErrorResponse(503, "contention", "the request met too many concurrent changes; retry shortly",
                                   request_id);
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    log::Error("request failed", {{"request_id", request_id}, {"route", route}, {"error", e.what()}});
    return http::ErrorResponse(500, "internal", "internal error; quote the request id when reporting it", request_id);
  }
}

}  // namespace spillway
