#pragma once
// The web console's sign-in: an API key exchanged for a session cookie (docs/console.md).
#include "apiserver/context.hpp"

namespace spillway::handlers {

Reply SignIn(Ctx& ctx);             // POST /v1/console/sessions
Reply GetConsoleSession(Ctx& ctx);  // GET /v1/console/session
Reply SignOut(Ctx& ctx);            // DELETE /v1/console/session

}  // namespace spillway::handlers
