#include "apiserver/auth/key_cache.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "core/long_lived.hpp"

namespace spillway {

KeyCache::KeyCache(Millis ttl, size_t max_entries, prometheus::Registry* registry)
    : ttl_(ttl), max_entries_(max_entries), entries_(&LongLivedMemory()) {
  if (!registry) return;
  using namespace prometheus;
  auto& lookups = BuildCounter()
                      .Name("spillway_auth_key_cache_lookups_total")
                      .Help("API key checks answered from the replica's key cache (hit) or the database (miss)")
                      .Register(*registry);
  hits_ = &lookups.Add({{"result", "hit"}});
  misses_ = &lookups.Add({{"result", "miss"}});
  invalidations_ = &BuildCounter()
                        .Name("spillway_auth_key_cache_invalidations_total")
                        .Help("Key cache invalidations: revocations, suspensions, listener changes")
                        .Register(*registry)
                        .Add({});
  listening_gauge_ = &BuildGauge()
                          .Name("spillway_auth_key_cache_listening")
                          .Help("1 while the replica hears revocations (LISTEN spillway_auth) and may use its key cache")
                          .Register(*registry)
                          .Add({});
  entries_gauge_ = &BuildGauge()
                        .Name("spillway_auth_key_cache_entries")
                        .Help("API keys the replica remembers as verified")
                        .Register(*registry)
                        .Add({});
}

std::optional<KeyCache::Entry> KeyCache::Find(const std::string& key_id, Clock::time_point now) const {
  std::optional<Entry> found;
  {
    std::lock_guard lk(mu_);
    if (listening_) {
      const auto it = entries_.find(std::string_view(key_id));
      if (it != entries_.end() && now - it->second.stored < ttl_) {
        const Slot& s = it->second;
        found = Entry{std::string(s.secret_hash), std::string(s.tenant_id), std::string(s.role), s.is_operator};
      }
    }
  }
  if (auto* c = found ? hits_ : misses_) c->Increment();
  return found;
}

std::uint64_t KeyCache::Generation() const {
  std::lock_guard lk(mu_);
  return generation_;
}

void KeyCache::Store(std::uint64_t generation, const std::string& key_id, Entry entry, Clock::time_point now) {
  std::lock_guard lk(mu_);
  if (!listening_ || ttl_.count() <= 0 || generation != generation_) return;
  if (entries_.size() >= max_entries_ && !entries_.contains(std::string_view(key_id))) {
    // Full: drop what has expired; if that frees nothing, start over (a full cache is a rare event,
    // and correctness never depends on an entry being here).
    std::erase_if(entries_, [&](const auto& kv) { return now - kv.second.stored >= ttl_; });
    if (entries_.size() >= max_entries_) entries_.clear();
  }
  std::pmr::memory_resource* memory = entries_.get_allocator().resource();
  const auto kept = [memory](std::string_view s) { return std::pmr::string(s, memory); };
  PutKept(entries_, key_id, Slot{kept(entry.secret_hash), kept(entry.tenant_id), kept(entry.role), entry.is_operator, now});
  Changed();
}

void KeyCache::InvalidateKey(const std::string& key_id) {
  std::lock_guard lk(mu_);
  ++generation_;
  EraseKept(entries_, key_id);
  Changed(true);
}

void KeyCache::InvalidateTenant(const std::string& tenant_id) {
  std::lock_guard lk(mu_);
  ++generation_;
  std::erase_if(entries_, [&](const auto& kv) { return std::string_view(kv.second.tenant_id) == tenant_id; });
  Changed(true);
}

void KeyCache::OnNotification(const std::string& payload) {
  if (payload.rfind("key:", 0) == 0) return InvalidateKey(payload.substr(4));
  if (payload.rfind("tenant:", 0) == 0) return InvalidateTenant(payload.substr(7));
  std::lock_guard lk(mu_);
  ++generation_;
  entries_.clear();
  Changed(true);
}

void KeyCache::SetListening(bool listening) {
  std::lock_guard lk(mu_);
  ++generation_;
  entries_.clear();
  listening_ = listening;
  if (listening_gauge_) listening_gauge_->Set(listening ? 1 : 0);
  Changed(true);
}

size_t KeyCache::Size() const {
  std::lock_guard lk(mu_);
  return entries_.size();
}

void KeyCache::Changed(bool invalidation) {
  if (entries_gauge_) entries_gauge_->Set(static_cast<double>(entries_.size()));
  if (invalidation && invalidations_) invalidations_->Increment();
}

}  // namespace spillway
