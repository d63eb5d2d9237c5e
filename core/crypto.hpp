#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

// Cryptographically random bytes (OpenSSL RAND_bytes); throws if the RNG fails.
std::string RandomBytes(size_t n);
std::string HexEncode(std::string_view bytes);
std::string Base64UrlEncode(std::string_view bytes);  // unpadded
std::string Base64Encode(std::string_view bytes, bool pad);  // the standard alphabet (RFC 4648)
std::optional<std::string> Base64Decode(std::string_view text);  // padded standard base64; nullopt if not
std::string Sha256(std::string_view data);            // raw 32 bytes
std::string Sha256Hex(std::string_view data);
std::string HmacSha256Hex(std::string_view key, std::string_view data);  // RFC 2104, lower-case hex
// Compares in time independent of where the inputs differ (lengths are not secret).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace spillway
