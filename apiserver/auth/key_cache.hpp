#pragma once
#include <chrono>
#include <cstdint>
#include <memory_resource>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/duration.hpp"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
}  // namespace prometheus

namespace spillway {

// Verified API keys, so a request does not pay a database round trip to authenticate.
//
// Only a key that the database has just shown to be valid, unrevoked and of an active tenant is
// stored, and an entry is trusted for at most `ttl`. What keeps a revocation or a suspension
// "refused at once":
//  - the replica that commits one invalidates its own cache before it answers;
//  - a trigger NOTIFYs `spillway_auth` on every such change, and each replica's notification thread
//    invalidates on receipt (other replicas learn within the notification delay, milliseconds);
//  - the cache is enabled only while that notification connection is listening: losing it clears
//    and disables the cache, so a replica that might miss a notification asks the database instead;
//  - every invalidation (and every enable/disable) moves a generation number, and a lookup stores its
//    result only if the generation it started under is still current, so a lookup that raced a
//    revocation cannot put the old answer back.
class KeyCache {
 public:
  struct Entry {
    std::string secret_hash;  // hex SHA-256, compared in constant time by the caller
    std::string tenant_id;
    std::string role;
    bool is_operator = false;
  };
  using Clock = std::chrono::steady_clock;

  // ttl 0 disables the cache for good. With a registry: spillway_auth_key_cache_* metrics.
  KeyCache(Millis ttl, size_t max_entries, prometheus::Registry* registry = nullptr);

  std::optional<Entry> Find(const std::string& key_id, Clock::time_point now = Clock::now()) const;
  // Take before asking the database; pass to Store with what it said.
  std::uint64_t Generation() const;
  void Store(std::uint64_t generation, const std::string& key_id, Entry entry, Clock::time_point now = Clock::now());

  void InvalidateKey(const std::string& key_id);
  void InvalidateTenant(const std::string& tenant_id);
  // A payload of the spillway_auth channel: "key:<id>" or "tenant:<id>"; anything else clears all.
  void OnNotification(const std::string& payload);
  // Listening for invalidations (true) or not (false); either way the cache starts empty.
  void SetListening(bool listening);

  size_t Size() const;

 private:
  // An entry as kept: in LongLivedMemory (core/long_lived.hpp), like every per-host cache.
  struct Slot {
    std::pmr::string secret_hash, tenant_id, role;
    bool is_operator = false;
    Clock::time_point stored;
  };
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  void Changed(bool invalidation = false);  // under mu_: metrics

  const Millis ttl_;
  const size_t max_entries_;
  mutable std::mutex mu_;
  bool listening_ = false;
  std::uint64_t generation_ = 0;
  std::pmr::unordered_map<std::pmr::string, Slot, Hash, std::equal_to<>> entries_;
  prometheus::Counter* hits_ = nullptr;
  prometheus::Counter* misses_ = nullptr;
  prometheus::Counter* invalidations_ = nullptr;
  prometheus::Gauge* listening_gauge_ = nullptr;
  prometheus::Gauge* entries_gauge_ = nullptr;
};

}  // namespace spillway
