#include "core/ssh_keys.hpp"

#include <openssl/bn.h>
#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <stdexcept>

#include "core/crypto.hpp"

namespace spillway {
namespace {

// The SSH wire format's pieces (RFC 4251): uint32, string, mpint.
struct Reader {
  std::string_view data;
  bool ok = true;
  std::string_view String() {
    if (data.size() < 4) {
      ok = false;
      return {};
    }
    const std::uint32_t n = (std::uint32_t)(unsigned char)data[0] << 24 | (std::uint32_t)(unsigned char)data[1] << 16 |
                            (std::uint32_t)(unsigned char)data[2] << 8 | (std::uint32_t)(unsigned char)data[3];
    if (data.size() - 4 < n) {
      ok = false;
      return {};
    }
    const auto s = data.substr(4, n);
    data.remove_prefix(4 + n);
    return s;
  }
};

void PutU32(std::string& out, std::uint32_t v) {
  for (int s : {24, 16, 8, 0}) out += static_cast<char>(v >> s & 0xFF);
}
void PutString(std::string& out, std::string_view s) {
  PutU32(out, static_cast<std::uint32_t>(s.size()));
  out += s;
}

int MpintBits(std::string_view m) {
  while (!m.empty() && m[0] == 0) m.remove_prefix(1);
  if (m.empty()) return 0;
  int bits = static_cast<int>(m.size() - 1) * 8;
  for (unsigned char top = static_cast<unsigned char>(m[0]); top; top >>= 1) ++bits;
  return bits;
}

std::string Fingerprint(std::string_view blob) { return "SHA256:" + Base64Encode(Sha256(blob), false); }

}  // namespace

std::string SshPublicKey::Line() const { return type + " " + blob_base64 + (comment.empty() ? "" : " " + comment); }

std::optional<SshPublicKey> ParseSshPublicKey(std::string_view line, std::string* why) {
  auto fail = [&](const std::string& w) -> std::optional<SshPublicKey> {
    *why = w;
    return std::nullopt;
  };
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  if (line.size() > 16384) return fail("is too long for a public key");
  if (line.find('\n') != std::string_view::npos) return fail("must be one key on one line");
  const auto sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return fail("is not an OpenSSH public key (\"ssh-ed25519 AAAA… comment\")");
  SshPublicKey key;
  key.type = std::string(line.substr(0, sp1));
  auto rest = line.substr(sp1 + 1);
  const auto sp2 = rest.find(' ');
  key.blob_base64 = std::string(rest.substr(0, sp2));
  if (sp2 != std::string_view::npos) {
    key.comment = std::string(rest.substr(sp2 + 1));
    for (char c : key.comment)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return fail("has a control character in its comment");
  }
  const auto blob = Base64Decode(key.blob_base64);
  if (!blob || blob->empty()) return fail("is not an OpenSSH public key: its key is not base64");
  Reader r{*blob};
  const auto inner_type = r.String();
  if (!r.ok || inner_type != key.type) return fail("is not an OpenSSH public key: its type and its key disagree");
  if (key.type == "ssh-ed25519") {
    const auto pk = r.String();
    if (!r.ok || pk.size() != 32) return fail("is not a valid ed25519 key");
    key.bits = 256;
  } else if (key.type.rfind("ecdsa-sha2-", 0) == 0) {
    const std::string curve = key.type.substr(11);
    const auto named = r.String();
    const auto point = r.String();
    const std::size_t coord = curve == "nistp256" ? 32 : curve == "nistp384" ? 48 : curve == "nistp521" ? 66 : 0;
    if (!coord) return fail("uses an ECDSA curve other than nistp256, nistp384 or nistp521");
    if (!r.ok || named != curve || point.size() != 1 + 2 * coord || point[0] != 4)
      return fail("is not a valid ECDSA key");
    key.bits = curve == "nistp256" ? 256 : curve == "nistp384" ? 384 : 521;
  } else if (key.type == "ssh-rsa") {
    const auto e = r.String();
    const auto n = r.String();
    if (!r.ok || e.empty() || n.empty()) return fail("is not a valid RSA key");
    key.bits = MpintBits(n);
    if (key.bits < 3072) return fail("is an RSA key of " + std::to_string(key.bits) + " bits: at least 3072 are needed");
  } else {
    return fail("is a " + key.type + " key: accepted are ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa (3072 bits or more)");
  }
  if (!r.data.empty()) return fail("has bytes after its key");
  key.fingerprint = Fingerprint(*blob);
  return key;
}

SshKeyPair GenerateSshKeyPair(const std::string& comment) {
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr),
                                                                 EVP_PKEY_CTX_free);
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) <= 0 || EVP_PKEY_keygen(ctx.get(), &raw) <= 0)
    throw std::runtime_error("ed25519 key generation failed");
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(raw, EVP_PKEY_free);
  unsigned char pub[32], seed[32];
  size_t pub_len = sizeof pub, seed_len = sizeof seed;
  if (EVP_PKEY_get_raw_public_key(pkey.get(), pub, &pub_len) <= 0 ||
      EVP_PKEY_get_raw_private_key(pkey.get(), seed, &seed_len) <= 0 || pub_len != 32 || seed_len != 32)
    throw std::runtime_error("ed25519 key export failed");
  const std::string_view pub_bytes(reinterpret_cast<const char*>(pub), 32);
  std::string blob;
  PutString(blob, "ssh-ed25519");
  PutString(blob, pub_bytes);

  SshKeyPair pair;
  pair.public_key.type = "ssh-ed25519";
  pair.public_key.blob_base64 = Base64Encode(blob, true);
  pair.public_key.comment = comment;
  pair.public_key.bits = 256;
  pair.public_key.fingerprint = Fingerprint(blob);

  // openssh-key-v1 (OpenSSH's PROTOCOL.key), unencrypted: the private section holds a check
  // number twice, the key (type, public key, seed || public key), the comment, and padding 1, 2, 3….
  std::string priv;
  const std::string check = RandomBytes(4);
  priv += check;
  priv += check;
  PutString(priv, "ssh-ed25519");
  PutString(priv, pub_bytes);
  PutString(priv, std::string(reinterpret_cast<const char*>(seed), 32) + std::string(pub_bytes));
  PutString(priv, comment);
  for (char pad = 1; priv.size() % 8 != 0; ++pad) priv += pad;
  std::string body = std::string("openssh-key-v1") + '\0';
  PutString(body, "none");
  PutString(body, "none");
  PutString(body, "");
  PutU32(body, 1);
  PutString(body, blob);
  PutString(body, priv);
  OPENSSL_cleanse(seed, sizeof seed);
  const std::string b64 = Base64Encode(body, true);
  std::string pem = "-----BEGIN OPENSSH PRIVATE KEY-----\n";
  for (size_t i = 0; i < b64.size(); i += 70) pem += b64.substr(i, 70) + "\n";
  pem += "-----END OPENSSH PRIVATE KEY-----\n";
  OPENSSL_cleanse(priv.data(), priv.size());
  pair.private_key = std::move(pem);
  return pair;
}

}  // namespace spillway
