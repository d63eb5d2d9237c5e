// The API key cache's rules: nothing is trusted while not listening, entries expire, and a lookup
// that raced an invalidation cannot store the old answer.
#include <gtest/gtest.h>

#include "apiserver/auth/key_cache.hpp"

using namespace spillway;
using namespace std::chrono_literals;

namespace {
KeyCache::Entry Key(const std::string& tenant) { return {"hash", tenant, "member", false}; }
}  // namespace

TEST(KeyCache, TrustsNothingUntilListening) {
  KeyCache cache(60s, 100);
  cache.Store(cache.Generation(), "key_a", Key("ten_a"));
  EXPECT_FALSE(cache.Find("key_a"));
  cache.SetListening(true);
  cache.Store(cache.Generation(), "key_a", Key("ten_a"));
  ASSERT_TRUE(cache.Find("key_a"));
  EXPECT_EQ(cache.Find("key_a")->tenant_id, "ten_a");
  // Losing the listener forgets everything, and nothing is stored until it is back.
  cache.SetListening(false);
  EXPECT_FALSE(cache.Find("key_a"));
  cache.Store(cache.Generation(), "key_a", Key("ten_a"));
  EXPECT_EQ(cache.Size(), 0u);
}

TEST(KeyCache, EntriesExpire) {
  KeyCache cache(60s, 100);
  cache.SetListening(true);
  const auto t0 = KeyCache::Clock::now();
  cache.Store(cache.Generation(), "key_a", Key("ten_a"), t0);
  EXPECT_TRUE(cache.Find("key_a", t0 + 59s));
  EXPECT_FALSE(cache.Find("key_a", t0 + 60s));
}

TEST(KeyCache, ZeroTtlStoresNothing) {
  KeyCache cache(0s, 100);
  cache.SetListening(true);
  cache.Store(cache.Generation(), "key_a", Key("ten_a"));
  EXPECT_FALSE(cache.Find("key_a"));
}

TEST(KeyCache, ALookupThatRacedAnInvalidationIsNotStored) {
  KeyCache cache(60s, 100);
  cache.SetListening(true);
  const auto before = cache.Generation();  // a request starts asking the database...
  cache.InvalidateKey("key_other");        // ...a revocation of any key lands meanwhile...
  cache.Store(before, "key_a", Key("ten_a"));
  EXPECT_FALSE(cache.Find("key_a"));  // ...so what it read may be stale and is dropped
  cache.Store(cache.Generation(), "key_a", Key("ten_a"));
  EXPECT_TRUE(cache.Find("key_a"));
}

TEST(KeyCache, NotificationsInvalidateKeysAndTenants) {
  KeyCache cache(60s, 100);
  cache.SetListening(true);
  cache.Store(cache.Generation(), "key_a1", Key("ten_a"));
  cache.Store(cache.Generation(), "key_a2", Key("ten_a"));
  cache.Store(cache.Generation(), "key_b1", Key("ten_b"));
  cache.OnNotification("key:key_a1");
  EXPECT_FALSE(cache.Find("key_a1"));
  EXPECT_TRUE(cache.Find("key_a2"));
  cache.OnNotification("tenant:ten_a");
  EXPECT_FALSE(cache.Find("key_a2"));
  EXPECT_TRUE(cache.Find("key_b1"));
  cache.OnNotification("something else");  // unknown: drop everything rather than guess
  EXPECT_EQ(cache.Size(), 0u);
}

TEST(KeyCache, StaysWithinItsSize) {
  KeyCache cache(60s, 3);
  cache.SetListening(true);
  for (int i = 0; i < 10; ++i) cache.Store(cache.Generation(), "key_" + std::to_string(i), Key("ten_a"));
  EXPECT_LE(cache.Size(), 3u);
  EXPECT_TRUE(cache.Find("key_9"));
}
