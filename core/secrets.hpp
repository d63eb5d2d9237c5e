#pragma once
// Secrets sealed at rest (docs/architecture.md, "Secrets"): tenants' env values are stored encrypted
// with AES-256-GCM under a key read from the file config names (secrets.key_file). Each sealed value
// carries the id of its key, so keys rotate: the newest key (the file's last) seals, every key in
// the file opens. A value is bound to where it is stored (`context`): moved elsewhere, it does not open.
#include <map>
#include <utility>
#include <vector>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace spillway {

// A key file that cannot be used, or a sealed value that does not open: never a silent fallback.
struct SecretError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class SecretBox {
 public:
  // Reads `path`: one key a line, "<key_id> <64 hex digits>" (key ids of [A-Za-z0-9_-], at most 32),
  // '#' starting a comment; the last key is the newest. The file must be readable by its owner
  // alone (chmod 600). Throws SecretError saying what is wrong, naming the file.
  static SecretBox FromFile(const std::string& path);
  // A box of the given keys (tests, tools); the last is the newest.
  static SecretBox FromKeys(const std::vector<std::pair<std::string, std::string>>& id_and_raw_key);
  // A new key file's line: "<key_id> <64 random hex digits>\n".
  static std::string NewKeyLine(const std::string& key_id);

  // "spw1:<key_id>:<base64 of nonce (12 bytes), ciphertext, tag (16 bytes)>", under the newest key.
  std::string Seal(std::string_view plaintext, std::string_view context) const;
  // The plaintext; throws SecretError when the key is not in the file or the value does not open
  // (another key of that id, another context, or altered).
  std::string Open(std::string_view sealed, std::string_view context) const;

  const std::string& newest_key_id() const { return newest_; }
  bool Has(const std::string& key_id) const { return keys_.count(key_id) > 0; }
  std::vector<std::string> key_ids() const;
  const std::string& source() const { return source_; }

  // The key id of a sealed value, nullopt when `value` is not one (plain text stored before sealing).
  static std::optional<std::string> KeyIdOf(std::string_view value);

 private:
  std::map<std::string, std::string> keys_;  // id -> 32 raw bytes
  std::string newest_;
  std::string source_;  // the file, for messages
};

}  // namespace spillway
