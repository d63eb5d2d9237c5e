#include "core/secrets.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "core/crypto.hpp"

namespace spillway {
namespace {

constexpr std::string_view kPrefix = "spw1:";
constexpr std::size_t kKeyBytes = 32, kNonceBytes = 12, kTagBytes = 16;

bool IsKeyId(std::string_view id) {
  if (id.empty() || id.size() > 32) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
  return true;
}

std::optional<std::string> HexDecode(std::string_view hex) {
  if (hex.size() % 2) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    int v = 0;
    for (char c : hex.substr(i, 2)) {
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return std::nullopt;
    }
    out += static_cast<char>(v);
  }
  return out;
}

using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;
CipherCtx NewCtx() {
  CipherCtx ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  if (!ctx) throw std::runtime_error("EVP_CIPHER_CTX_new failed");
  return ctx;
}
const unsigned char* U(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

}  // namespace

SecretBox SecretBox::FromFile(const std::string& path) {
  const std::string where = "secrets.key_file " + (path.empty() ? std::string("(not set)") : path);
  if (path.empty())
    throw SecretError("secrets.key_file is not set: tenants' env values are sealed with a key from it (make one with "
                      "`spillway-apiserver new-secret-key > FILE`, chmod 600)");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw SecretError(where + ": cannot be read: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw SecretError(where + ": is not a file");
  if (st.st_mode & 077) throw SecretError(where + ": is readable or writable by others than its owner (chmod 600 it)");
  std::ifstream in(path);
  if (!in) throw SecretError(where + ": cannot be read: " + std::strerror(errno));
  SecretBox box;
  box.source_ = path;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string id, hex, extra;
    if (!(words >> id)) continue;
    const std::string at = where + ":" + std::to_string(n);
    if (!(words >> hex) || (words >> extra)) throw SecretError(at + ": expected \"<key_id> <64 hex digits>\"");
    if (!IsKeyId(id)) throw SecretError(at + ": a key id is 1 to 32 of A-Z a-z 0-9 _ -");
    const auto raw = HexDecode(hex);
    if (!raw || raw->size() != kKeyBytes) throw SecretError(at + ": key " + id + " is not 64 hex digits (32 bytes)");
    if (!box.keys_.emplace(id, *raw).second) throw SecretError(at + ": key " + id + " is listed twice");
    box.newest_ = id;
  }
  if (box.keys_.empty()) throw SecretError(where + ": holds no key");
  return box;
}

SecretBox SecretBox::FromKeys(const std::vector<std::pair<std::string, std::string>>& keys) {
  SecretBox box;
  box.source_ = "(given keys)";
  for (const auto& [id, raw] : keys) {
    if (!IsKeyId(id) || raw.size() != kKeyBytes) throw SecretError("a key is a valid id and 32 bytes");
    box.keys_[id] = raw;
    box.newest_ = id;
  }
  if (box.keys_.empty()) throw SecretError("no key given");
  return box;
}

std::string SecretBox::NewKeyLine(const std::string& key_id) {
  if (!IsKeyId(key_id)) throw SecretError("a key id is 1 to 32 of A-Z a-z 0-9 _ -");
  return key_id + " " + HexEncode(RandomBytes(kKeyBytes)) + "\n";
}

std::vector<std::string> SecretBox::key_ids() const {
  std::vector<std::string> out;
  for (const auto& [id, key] : keys_) out.push_back(id);
  return out;
}

std::optional<std::string> SecretBox::KeyIdOf(std::string_view value) {
  if (value.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  const auto rest = value.substr(kPrefix.size());
  const auto colon = rest.find(':');
  if (colon == std::string_view::npos || !IsKeyId(rest.substr(0, colon))) return std::nullopt;
  return std::string(rest.substr(0, colon));
}

std::string SecretBox::Seal(std::string_view plaintext, std::string_view context) const {
  const std::string& key = keys_.at(newest_);
  const std::string nonce = RandomBytes(kNonceBytes);
  auto ctx = NewCtx();
  std::string out(plaintext.size() + kTagBytes, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  int len = 0, fin = 0;
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, U(key), U(nonce)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, U(context), static_cast<int>(context.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), o, &len, U(plaintext), static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), o + len, &fin) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes, o + plaintext.size()) != 1)
    throw std::runtime_error("AES-256-GCM sealing failed");
  return std::string(kPrefix) + newest_ + ":" + Base64Encode(nonce + out, true);
}

std::string SecretBox::Open(std::string_view sealed, std::string_view context) const {
  const auto id = KeyIdOf(sealed);
  if (!id) throw SecretError("not a sealed value");
  const auto it = keys_.find(*id);
  if (it == keys_.end()) throw SecretError("sealed under key " + *id + ", which " + source_ + " does not hold");
  const auto blob = Base64Decode(sealed.substr(kPrefix.size() + id->size() + 1));
  if (!blob || blob->size() < kNonceBytes + kTagBytes) throw SecretError("a sealed value under key " + *id + " is damaged");
  const std::string_view nonce = std::string_view(*blob).substr(0, kNonceBytes);
  const std::string_view body = std::string_view(*blob).substr(kNonceBytes, blob->size() - kNonceBytes - kTagBytes);
  std::string tag = blob->substr(blob->size() - kTagBytes);
  auto ctx = NewCtx();
  std::string out(body.size(), '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  int len = 0, fin = 0;
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, U(it->second), U(nonce)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, U(context), static_cast<int>(context.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), o, &len, U(body), static_cast<int>(body.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), o + len, &fin) != 1)
    throw SecretError("a value sealed under key " + *id + " does not open with the key of that id in " + source_ +
                      " (another key, or the value was altered)");
  return out;
}

}  // namespace spillway
