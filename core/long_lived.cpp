#include "core/long_lived.hpp"

#include <atomic>
#include <mutex>

namespace spillway {
namespace {

class LockedPool final : public std::pmr::memory_resource {
 public:
  std::size_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

 private:
  void* do_allocate(std::size_t bytes, std::size_t align) override {
    void* p;
    {
      std::lock_guard lk(mu_);
      p = pool_.allocate(bytes, align);
    }
    in_use_.fetch_add(bytes, std::memory_order_relaxed);
    return p;
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
    {
      std::lock_guard lk(mu_);
      pool_.deallocate(p, bytes, align);
    }
    in_use_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }

  std::mutex mu_;
  std::pmr::unsynchronized_pool_resource pool_{std::pmr::new_delete_resource()};
  std::atomic<std::size_t> in_use_{0};
};

LockedPool& Pool() {
  // Never destroyed: static objects' destructors (the reactor's, the caches') may still give blocks
  // back after this translation unit's statics are gone.
  static auto* pool = new LockedPool;
  return *pool;
}

}  // namespace

std::pmr::memory_resource& LongLivedMemory() { return Pool(); }
std::size_t LongLivedMemoryInUse() { return Pool().in_use(); }

}  // namespace spillway
