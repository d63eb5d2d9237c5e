#include "apiserver/rate_limit.hpp"

#include <gtest/gtest.h>

using namespace spillway;
using namespace std::chrono_literals;

namespace {
RateLimitSettings Limits(std::int64_t key_rate, std::int64_t key_burst, std::int64_t tenant_rate, std::int64_t tenant_burst) {
  RateLimitSettings s;
  s.key_rate = key_rate;
  s.key_burst = key_burst;
  s.tenant_rate = tenant_rate;
  s.tenant_burst = tenant_burst;
  return s;
}
}  // namespace

TEST(RateLimiter, AKeyHasItsBurstThenItsRate) {
  RateLimiter limiter(Limits(2, 4, 0, 0));
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(limiter.Take("key_a", "ten_a", t0)) << i;
  auto refused = limiter.Take("key_a", "ten_a", t0);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->scope, "key");
  EXPECT_EQ(refused->rate, 2);
  EXPECT_EQ(refused->burst, 4);
  EXPECT_EQ(refused->retry_after_s, 1);  // half a second to the next token, rounded up
  EXPECT_TRUE(limiter.Take("key_a", "ten_a", t0 + 400ms));  // 0.8 of a token
  EXPECT_FALSE(limiter.Take("key_a", "ten_a", t0 + 500ms));  // a refusal took nothing
  EXPECT_TRUE(limiter.Take("key_a", "ten_a", t0 + 500ms));
  EXPECT_FALSE(limiter.Take("key_b", "ten_a", t0));  // another key has its own bucket
  // A long idle refills to the burst, not beyond.
  for (int i = 0; i < 4; ++i) EXPECT_FALSE(limiter.Take("key_a", "ten_a", t0 + 1h)) << i;
  EXPECT_TRUE(limiter.Take("key_a", "ten_a", t0 + 1h));
}

TEST(RateLimiter, ATenantsKeysShareItsBucketAndARefusalTakesNothing) {
  RateLimiter limiter(Limits(10, 10, 1, 3));
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  EXPECT_FALSE(limiter.Take("key_a", "ten_a", t0));
  EXPECT_FALSE(limiter.Take("key_b", "ten_a", t0));
  EXPECT_FALSE(limiter.Take("key_c", "ten_a", t0));
  const auto refused = limiter.Take("key_a", "ten_a", t0);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->scope, "tenant");
  EXPECT_EQ(refused->retry_after_s, 1);
  EXPECT_FALSE(limiter.Take("key_z", "ten_b", t0));  // another tenant is untouched
  // key_a's own bucket lost nothing to the tenant's refusals: 9 left once the tenant refills.
  for (int i = 0; i < 20; ++i) limiter.Take("key_a", "ten_a", t0);
  int allowed = 0;
  for (int s = 1; s <= 20; ++s) allowed += !limiter.Take("key_a", "ten_a", t0 + std::chrono::seconds(s));
  EXPECT_EQ(allowed, 20);  // the tenant's 1 a second, each second
}

TEST(RateLimiter, ZeroTurnsABucketOff) {
  RateLimiter limiter(Limits(0, 0, 0, 0));
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  for (int i = 0; i < 10000; ++i) ASSERT_FALSE(limiter.Take("key_a", "ten_a", t0));
}
