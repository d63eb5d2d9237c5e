#pragma once
#include <string>
#include <string_view>

namespace spillway {

// Resource ids: a type prefix and 26 Crockford base32 characters (48-bit millisecond time, then
// 80 random bits), so ids sort by creation time and pagination by id follows it.
std::string NewId(std::string_view prefix);  // NewId("ten") -> "ten_01jf..."
// True when `id` is PREFIX_ followed by 26 base32 characters.
bool IsValidId(std::string_view id, std::string_view prefix);

}  // namespace spillway
