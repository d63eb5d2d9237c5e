#include "apiserver/context.hpp"

#include <charconv>

#include "accounts/audit.hpp"
#include "core/db.hpp"
#include "core/errors.hpp"

namespace spillway {

void Ctx::RunWrite(const std::function<void(Tx&)>& run) {
  if (outer) return run(*outer);
  InTransaction(conn, [&](pqxx::work& tx) { run(tx); });
}

void Ctx::RunRead(const std::function<void(Tx&)>& run, bool snapshot) {
  if (outer) return run(*outer);
  if (snapshot) {
    Snapshot tx(conn);
    run(tx);
    tx.commit();
  } else {
    Autocommit tx(conn);
    run(tx);
  }
}

void ReadSnapshotOn(Session& conn, const std::function<void(Tx&)>& run) {
  Snapshot tx(conn);
  run(tx);
  tx.commit();
}

AuditRecord Ctx::AuditOf(const std::string& tenant_id, const std::string& action, const std::string& target) const {
  return AuditRecord{tenant_id, principal.key_id, action, target, request.request_id};
}

void RequireTenantOf(const Principal& principal, const std::string& tenant_id) {
  if (principal.role_bit == kMember && tenant_id != principal.tenant_id)
    throw ApiError(404, "not_found", "no such tenant");
}

void Ctx::RequireTenant(const std::string& tenant_id) const { RequireTenantOf(principal, tenant_id); }

std::string Ctx::OwnerTenant(const std::optional<std::string>& named) const {
  if (principal.role_bit == kMember) {
    if (named && !named->empty() && *named != principal.tenant_id) throw ApiError(404, "not_found", "no such tenant");
    return principal.tenant_id;
  }
  if (!named || named->empty()) throw ApiError(400, "invalid_parameter", "tenant_id is required for a " + principal.role + " key");
  return *named;
}

std::string Ctx::OwnerTenantFromQuery() const {
  const std::string t = Query("tenant_id");
  return OwnerTenant(t.empty() ? std::nullopt : std::optional<std::string>(t));
}

std::string QueryText(const QueryParams& query, const std::string& name) {
  auto it = query.find(name);
  return it == query.end() ? std::string() : it->second;
}

std::int64_t QueryInt(const QueryParams& query, const std::string& name, std::int64_t dflt, std::int64_t min,
                      std::int64_t max) {
  const std::string text = QueryText(query, name);
  if (text.empty()) return dflt;
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size() || v < min || v > max)
    throw ApiError(400, "invalid_parameter",
                   name + " must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
  return v;
}

int QueryLimit(const QueryParams& query, int dflt, int max) {
  return static_cast<int>(QueryInt(query, "limit", dflt, 1, max));
}

}  // namespace spillway
