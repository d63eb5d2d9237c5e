#pragma once
#include <string>

#include "apiserver/context.hpp"

namespace spillway {

// Runs an idempotent route's handler for a request that carries an Idempotency-Key.
//
// The key is scoped to the caller's tenant and remembered for idempotency.ttl with a hash of the
// request (method, path and its JSON in canonical form, so member order and spacing do not matter).
// One transaction holds, in this order: a transaction-scoped advisory lock on the key (a second
// request with the key while it is held is answered 409 idempotency_key_in_flight), the handler's
// writes (in a savepoint) and the stored answer. Nothing about "in flight" outlives the request:
// a crash, a lost connection or a rollback ends the transaction and frees the key at once, and the
// change and its stored answer commit together or not at all, so a retry yields exactly one change.
// A retry with the same key and request gets the stored answer (Idempotent-Replayed: true); with a
// different request, 422 idempotency_key_reused. Answers of 409 and 5xx are not stored: they say
// "not now", and the retry should try again.
Reply RunIdempotent(Ctx& ctx, Handler handler, const std::string& key, Millis ttl);

// Deletes records older than ttl; returns how many. A periodic step.
int ExpireIdempotencyKeys(Session& conn, TimeMs now, Millis ttl);

}  // namespace spillway
