#include "apiserver/context.hpp"

#include <charconv>

#include "core/errors.hpp"

namespace spillway {

unsigned RoleBit(const std::string& role) {
  if (role == "admin") return kAdmin;
  if (role == "finance") return kFinance;
  if (role == "operator") return kOperator;
  if (role == "member") return kMember;
  return 0;
}

const char* RoleName(unsigned bit) {
  switch (bit) {
    case kAdmin: return "admin";
    case kFinance: return "finance";
    case kOperator: return "operator";
    case kMember: return "member";
  }
  return "unknown";
}

void Ctx::RequireTenant(const std::string& tenant_id) const {
  // Another tenant's resource is 404, never 403: a member cannot even learn that it exists.
  if (principal.role_bit == kMember && tenant_id != principal.tenant_id)
    throw ApiError(404, "not_found", "no such tenant");
}

std::string Ctx::Query(const std::string& name) const {
  auto it = request.query.find(name);
  return it == request.query.end() ? std::string() : it->second;
}

std::int64_t Ctx::QueryInt(const std::string& name, std::int64_t dflt, std::int64_t min, std::int64_t max) const {
  const std::string text = Query(name);
  if (text.empty()) return dflt;
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size() || v < min || v > max)
    throw ApiError(400, "invalid_parameter",
                   name + " must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
  return v;
}

}  // namespace spillway
