#pragma once
#include "apiserver/context.hpp"

namespace spillway::handlers {

// Agents (docs/protocol.md).
Reply RegisterAgent(Ctx& ctx);      // POST /v1/agent/register (bootstrap token)
Reply AgentHeartbeat(Ctx& ctx);     // POST /v1/agent/heartbeat (host token)
// Its fast path: a heartbeat repeating its host's last report is recorded in memory for the next
// batch write (HeartbeatRecorder::TryRecord); anything else takes AgentHeartbeat.
bool FastHeartbeat(FastCall& call);
Reply AgentAssignments(Ctx& ctx);   // GET /v1/agent/assignments?version=&wait= (host token, long poll)

}  // namespace spillway::handlers
