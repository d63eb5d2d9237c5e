#pragma once
#include "apiserver/context.hpp"

namespace spillway::metering {
struct IngestResult;
}

namespace spillway::handlers {

// POST /v1/agent/samples (host token): a batch of GPU samples, stored exactly once. The dispatcher
// usually takes the path without a database worker (FastIngest); this is the path for a token not
// in the key cache, which waits for the commit on the worker.
Reply IngestSamples(Ctx& ctx);
// The fast path: the batch is parsed on the io thread and handed to the ingest committers, which
// answer when it is committed (or at once 503 when their queue is full); no database worker is held.
bool FastIngest(FastCall& call);
// The answer to an ingest result: 200 {"accepted", "duplicate"}; otherwise throws what
// apiserver/errors.cpp maps (422 invalid_sample with sample_index, 422 validation_failed, 503).
Reply SamplesReply(const metering::IngestResult& result, Millis retry_after);
// When the request arrived, as the transport saw it (nullopt when it did not say): the moment a
// host's sent_at_ms is compared with.
std::optional<TimeMs> ArrivalOf(const http::Request& request);

}  // namespace spillway::handlers
