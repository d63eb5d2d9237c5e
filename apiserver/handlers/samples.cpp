// Metering's ingest endpoint (docs/protocol.md, POST /v1/agent/samples).
#include "apiserver/handlers/samples.hpp"

#include <boost/json.hpp>

#include "apiserver/errors.hpp"
#include "core/errors.hpp"
#include "core/json.hpp"
#include "metering/ingest.hpp"
#include "protocol/agent.hpp"

namespace spillway::handlers {

Reply SamplesReply(const metering::IngestResult& r, Millis retry_after) {
  using Kind = metering::IngestResult::Kind;
  switch (r.kind) {
    case Kind::kAccepted:
      return {200, protocol::ToJson(protocol::SamplesAnswer{r.accepted, false})};
    case Kind::kDuplicate:
      return {200, protocol::ToJson(protocol::SamplesAnswer{0, true})};
    case Kind::kRejected:
      if (r.sample_index) throw protocol::SampleError(*r.sample_index, r.message, r.unheld, r.overlapping);
      throw InvalidInput(r.message);
    case Kind::kUnavailable:
      break;
  }
  throw DbUnavailable(true, r.message.empty() ? "samples cannot be stored now; send the batch again" : r.message,
                      retry_after);
}

std::optional<TimeMs> ArrivalOf(const http::Request& request) {
  if (request.received_ms <= 0) return std::nullopt;
  return FromEpochMs(request.received_ms);
}

Reply IngestSamples(Ctx& ctx) {
  if (!ctx.ingest) throw DbUnavailable(false, "this server does not ingest samples", Millis(1000));
  protocol::SampleBatch batch = protocol::ParseSampleBatch(ctx.body);
  return SamplesReply(ctx.ingest->SubmitAndWait(ctx.principal.host_id, std::move(batch), ArrivalOf(ctx.request)),
                      ctx.ingest->retry_after());
}

bool FastIngest(FastCall& call) {
  if (!call.ingest) return false;
  const http::Request& request = call.request;
  http::Response out;
  try {
    protocol::SampleBatch batch = protocol::ParseSampleBatch(ParseJsonBody(request.body));
    const Millis retry = call.ingest->retry_after();
    auto answer = [respond = call.respond, request_id = request.request_id, pattern = call.route,
                   retry](metering::IngestResult result) {
      http::Response r;
      try {
        const Reply reply = SamplesReply(result, retry);
        r.status = reply.status;
        r.body = ToJson(reply.body) + "\n";
      } catch (...) {
        r = ErrorResponseForCurrent(request_id, pattern);
      }
      r.route = pattern;
      respond(std::move(r));
    };
    if (call.ingest->Submit(call.principal.host_id, std::move(batch), std::move(answer), ArrivalOf(request)))
      return true;
    out = ErrorResponseFor(DbUnavailable(true, "the ingest queue is full; send the batch again", retry),
                           request.request_id);
  } catch (...) {
    out = ErrorResponseForCurrent(request.request_id, call.route);
  }
  out.route = call.route;
  call.respond(std::move(out));
  return true;
}

}  // namespace spillway::handlers
