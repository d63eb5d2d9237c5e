#include <gtest/gtest.h>

#include <set>

#include "accounts/api_keys.hpp"
#include "core/crypto.hpp"
#include "core/ids.hpp"
#include "core/clock.hpp"
#include "core/json.hpp"

using namespace spillway;

TEST(Ids, HavePrefixAreUniqueAndSortByTime) {
  std::set<std::string> seen;
  std::string prev;
  for (int i = 0; i < 1000; ++i) {
    const auto id = NewId("ten");
    EXPECT_TRUE(IsValidId(id, "ten")) << id;
    EXPECT_FALSE(IsValidId(id, "key"));
    EXPECT_TRUE(seen.insert(id).second);
    if (i % 100 == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      const auto later = NewId("ten");
      EXPECT_LT(id.substr(0, 14), later.substr(0, 14) + "~");  // time prefix never goes backwards
      EXPECT_LE(id.substr(4, 10), later.substr(4, 10));
    }
  }
  EXPECT_FALSE(IsValidId("ten_short", "ten"));
  EXPECT_FALSE(IsValidId("ten_01m8b6azr7cs64hgd7w5gya4wU", "ten"));  // not Crockford lower-case
  EXPECT_FALSE(IsValidId("ten_01m8b6azr7cs64hgd7w5gya4w'", "ten"));
}

TEST(Crypto, KnownVectors) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_EQ(Base64UrlEncode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(HexEncode("\x01\xab"), "01ab");
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_NE(RandomBytes(32), RandomBytes(32));
}

TEST(ApiKeys, TokensRoundTripAndCarry256BitSecrets) {
  const auto k = GenerateApiKey();
  EXPECT_TRUE(IsValidId(k.id, "key"));
  const auto parsed = ParseApiKey(k.token);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->id, k.id);
  EXPECT_EQ(parsed->secret.size(), 43u);  // 32 random bytes, base64url
  EXPECT_EQ(Sha256Hex(parsed->secret), k.secret_hash);
  EXPECT_FALSE(ParseApiKey(""));
  EXPECT_FALSE(ParseApiKey(k.token.substr(1)));
  EXPECT_FALSE(ParseApiKey("xxx" + k.token.substr(3)));
  EXPECT_NE(GenerateApiKey().token, k.token);
}

TEST(Time, FormatsAndParsesRfc3339Utc) {
  const TimeMs t = TimeMs(std::chrono::milliseconds(1764133210123));
  EXPECT_EQ(FormatTime(t), "2025-11-26T05:00:10.123Z");
  EXPECT_EQ(ParseTime("2025-11-26T05:00:10.123Z"), t);
  EXPECT_EQ(ParseTime("2025-11-26T05:00:10Z"), t - std::chrono::milliseconds(123));
  EXPECT_FALSE(ParseTime("2025-11-26 05:00:10"));
  EXPECT_FALSE(ParseTime("2025-02-30T00:00:00Z"));
  EXPECT_FALSE(ParseTime("2025-11-26T05:00:10+02:00"));
}
