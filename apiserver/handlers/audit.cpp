// Admins: the audit log, oldest first, paged.
#include "apiserver/handlers/audit.hpp"

#include <boost/json.hpp>
#include <algorithm>
#include <charconv>

#include "accounts/audit.hpp"
#include "apiserver/handlers/common.hpp"
#include "core/errors.hpp"
#include "core/ids.hpp"

namespace spillway::handlers {
namespace {

boost::json::value OrNull(const std::string& s) { return s.empty() ? boost::json::value(nullptr) : boost::json::value(s); }

boost::json::object EntryJson(const AuditEntry& e) {
  return {{"id", std::to_string(e.id)},
          {"at", FormatTime(e.at)},
          {"actor_key_id", OrNull(e.record.actor_key_id)},
          {"tenant_id", OrNull(e.record.tenant_id)},
          {"action", e.record.action},
          {"target", OrNull(e.record.target)},
          {"request_id", OrNull(e.record.request_id)}};
}

}  // namespace

Reply ListAudit(Ctx& ctx) {
  AuditFilter f;
  f.limit = ctx.Limit();
  f.actor_key_id = ctx.Query("actor");
  if (!f.actor_key_id.empty() && !IsValidId(f.actor_key_id, "key"))
    throw ApiError(400, "invalid_parameter", "actor must be an API key id (key_…)");
  f.action = ctx.Query("action");
  if (f.action.size() > 100) throw ApiError(400, "invalid_parameter", "action is at most 100 characters");
  f.tenant_id = ctx.Query("tenant_id");
  if (!f.tenant_id.empty() && !IsValidId(f.tenant_id, "ten"))
    throw ApiError(400, "invalid_parameter", "tenant_id is not a tenant id");
  if (const std::string since = ctx.Query("since"); !since.empty()) {
    f.since = ParseTime(since);
    if (!f.since) throw ApiError(400, "invalid_parameter", "since must be an RFC 3339 UTC time such as 2026-11-26T00:00:00Z");
    f.since = std::max(*f.since, TimeMs{});  // nothing was audited before 1970
  }
  if (const std::string cursor = ctx.Query("cursor"); !cursor.empty()) {
    auto [p, ec] = std::from_chars(cursor.data(), cursor.data() + cursor.size(), f.after_id);
    if (ec != std::errc() || p != cursor.data() + cursor.size() || f.after_id <= 0)
      throw ApiError(400, "invalid_parameter", "cursor is not one this API returned");
  }
  const int limit = f.limit++;
  const auto entries = ctx.Read([&](Tx& tx) { return spillway::ListAudit(tx, f); });
  return {200, Page(entries, limit, EntryJson, [](const AuditEntry& e) { return std::to_string(e.id); })};
}

}  // namespace spillway::handlers
