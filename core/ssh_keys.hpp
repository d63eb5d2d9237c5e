#pragma once
// OpenSSH keys, as tenants hand them to instances: parsing and checking a public key line
// ("ssh-ed25519 AAAA… comment"), its SHA256 fingerprint as ssh-keygen -l prints it, and a fresh
// ed25519 key pair in OpenSSH's own formats (generated with OpenSSL).
#include <optional>
#include <string>
#include <string_view>

namespace spillway {

struct SshPublicKey {
  std::string type;         // ssh-ed25519 | ecdsa-sha2-nistp256/384/521 | ssh-rsa
  std::string blob_base64;  // the key itself, as in the line
  std::string comment;
  int bits = 0;             // 256 for ed25519, the curve's size, the RSA modulus's size
  std::string fingerprint;  // "SHA256:…" (unpadded base64 of SHA-256 of the blob)
  std::string Line() const;  // "type blob comment" (comment left out when empty)
};

// Parses one public key line; nullopt with *why when it is not an OpenSSH public key of an
// accepted kind: ed25519, ECDSA (P-256, P-384, P-521), or RSA of at least 3072 bits.
std::optional<SshPublicKey> ParseSshPublicKey(std::string_view line, std::string* why);

struct SshKeyPair {
  SshPublicKey public_key;
  std::string private_key;  // "-----BEGIN OPENSSH PRIVATE KEY-----…", unencrypted
};
// A new ed25519 key pair; `comment` goes into both halves.
SshKeyPair GenerateSshKeyPair(const std::string& comment);

}  // namespace spillway
