#include "accounts/roles.hpp"

namespace spillway {
namespace {
struct RoleName_ {
  unsigned bit;
  const char* name;
};
constexpr RoleName_ kRoles[] = {{kAdmin, "admin"},   {kFinance, "finance"}, {kOperator, "operator"},
                                {kMember, "member"}, {kHost, "host"},       {kBootstrap, "bootstrap"}};
}  // namespace

unsigned RoleBit(std::string_view role) {
  for (const auto& r : kRoles)
    if (role == r.name) return r.bit;
  return 0;
}

const char* RoleName(unsigned bit) {
  for (const auto& r : kRoles)
    if (bit == r.bit) return r.name;
  return "unknown";
}

}  // namespace spillway
