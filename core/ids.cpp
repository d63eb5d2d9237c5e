#include "core/ids.hpp"

#include <array>
#include <chrono>
#include <cstdint>

#include "core/crypto.hpp"

namespace spillway {
namespace {
constexpr char kCrockford[] = "0123456789abcdefghjkmnpqrstvwxyz";
}

std::string NewId(std::string_view prefix) {
  const auto ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch()).count());
  const std::string rnd = RandomBytes(10);
  // 128 bits: 48 time + 80 random, written as 26 base32 digits (130 bits, top two zero).
  unsigned char bits[16];
  for (int i = 0; i < 6; ++i) bits[i] = static_cast<unsigned char>(ms >> (40 - 8 * i));
  for (int i = 0; i < 10; ++i) bits[6 + i] = static_cast<unsigned char>(rnd[i]);
  std::string out(prefix);
  out += '_';
  for (int d = 0; d < 26; ++d) {
    const int bit = d * 5 - 2;  // position of this digit's top bit within the 128
    unsigned v = 0;
    for (int b = 0; b < 5; ++b) {
      const int pos = bit + b;
      v <<= 1;
      if (pos >= 0) v |= (bits[pos / 8] >> (7 - pos % 8)) & 1;
    }
    out += kCrockford[v];
  }
  return out;
}

bool IsValidId(std::string_view id, std::string_view prefix) {
  if (id.size() != prefix.size() + 27 || id.substr(0, prefix.size()) != prefix || id[prefix.size()] != '_')
    return false;
  // Every request with an id in its path checks it: a table, not a search of the alphabet.
  static constexpr auto kIsDigit = [] {
    std::array<bool, 256> t{};
    for (const char* p = kCrockford; *p; ++p) t[static_cast<unsigned char>(*p)] = true;
    return t;
  }();
  for (char c : id.substr(prefix.size() + 1))
    if (!kIsDigit[static_cast<unsigned char>(c)]) return false;
  return true;
}

}  // namespace spillway
