#pragma once
// Who may do what: a key's role, as a bit so a route can name the set of roles it admits.
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

// kHost: a GPU host's agent (host token); kBootstrap: the agent bootstrap token (registration).
enum Role : unsigned { kAdmin = 1, kFinance = 2, kOperator = 4, kMember = 8, kHost = 16, kBootstrap = 32 };
constexpr unsigned kAnyRole = kAdmin | kFinance | kOperator | kMember;
constexpr unsigned kUnauthenticated = 0;  // a route anyone may call, without a key

// The one string table: "admin", "finance", "operator", "member", "host", "bootstrap".
unsigned RoleBit(std::string_view role);  // 0 when unknown
const char* RoleName(unsigned bit);       // "unknown" for anything else
// A role an API key may hold (not host or bootstrap).
inline bool IsKeyRole(unsigned bit) { return bit & kAnyRole; }

}  // namespace spillway
