// OpenSSH public keys as ssh-keygen makes them (fixtures made with ssh-keygen 9.2 and checked
// with ssh-keygen -lf), and what is refused.
#include <gtest/gtest.h>

#include "core/ssh_keys.hpp"

using namespace spillway;

namespace {
const char* kEd25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqzKrdyTTFE3V4KeapNNRa6weyLwwp99yqnlQ9XqnNG alice@laptop";
const char* kEcdsa384 = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBGgOCT4ee/1Zm236QsR1hzuCTWZJ861mD+MyhFwwp70KRCzydvKSymdq9yPMpEQmWgCrAcaXRq29Uoaw+lBLa7x4j4pqLkrqSAgzp1OZtdI3aiNTEUpfuS16lpsVvVx6fg== ci";
const char* kRsa3072 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQDF4jrp03bh6gdp/Q/KcfvOD5ZPbOGQSq/KqjpooeQ9Y0BXAPrC5ias/RQmGdemnfnrTD5z/9IA9vE4f0VLVdbg8JU0mxcXAj9x40AcwaG2RfQSYYZGIlNRkOvWU6mcUX9+oDnhbp3GaVNuSHN+QNgVcid8gdM2uXK70e56GAs5qYpK0hfcrtCZcmbv+o8NeL9DMYv1GZ9ZqL+PqvL458rYZ6uEgOWXn8SpCJZzHhJR4Zq0uHntGeNL0jE6lFkuyB1e+T2M/NtFPsDXPsO6A0P6AbcBcFiSu4btfaNt9RgTAq8AoA7Xkh+SW5PqZRrged10KrXUQwt7s9Ca44kqXHbXdNBkNCtwLrXVx2NsPNbqa5zAIQyg9Ofas/lKisICVbu5vmIt3esEoBogSX6NPmZn2Y3IvpFHMJagT2IjI8oSFug735IQDYNwfhVvAc1fxG3QlLU6kCo5QbpUVW+n2HZxizr9OkULg8LozkOccO1pyCVSm7I8ojovdvELr/fYp3M= rsa3072";
const char* kRsa2048 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDoKBGvqphbnR436F4YmoIEFIUpiI3e/eLCM1eoWpSJ/ZXxxzoCyZoql8XbhH8SxYbBw1IqZTL2f3mKzPj/ojoqKcx1Opcnu90Byr67DwiU49pvSbhS49HTOQh0XJTYyj2WJAMyzuAcb2Rdpc0W599TnWj+9/FLBwaOUC0Su7DjbbmnzwZ9aLM/hhf/+OuufAIwnNNrGbtbrQPGfoYhJOXHtJgtkB0li59R4/l2F+5FF47UHp1dgBfmeewEJL+46qPqtUiskbZMPpmY2YQsJmGRMQ+XvU01WI6bIYgpWXsHO3AELBk90DXddfUi6OzBOdjaZhfKvsqWOSddXeFu/oz5 rsa2048";

SshPublicKey Parse(std::string_view line) {
  std::string why;
  auto k = ParseSshPublicKey(line, &why);
  EXPECT_TRUE(k) << why;
  return k.value_or(SshPublicKey{});
}
std::string Why(std::string_view line) {
  std::string why;
  EXPECT_FALSE(ParseSshPublicKey(line, &why));
  return why;
}
}  // namespace

TEST(SshKeys, FingerprintsAsSshKeygenDoes) {
  const auto ed = Parse(kEd25519);
  EXPECT_EQ(ed.type, "ssh-ed25519");
  EXPECT_EQ(ed.bits, 256);
  EXPECT_EQ(ed.comment, "alice@laptop");
  EXPECT_EQ(ed.fingerprint, "SHA256:4hciI19E1kAf4DDXxqQiQF2wBuLEgYz7KO5qxJxpB0Q");
  EXPECT_EQ(ed.Line(), kEd25519);
  const auto ec = Parse(kEcdsa384);
  EXPECT_EQ(ec.bits, 384);
  EXPECT_EQ(ec.fingerprint, "SHA256:SiufCo/Eg/Uht2D519JyQBwQ50uG+yFfdYQfA/RFDas");
  const auto rsa = Parse(std::string(kRsa3072) + "\r\n");
  EXPECT_EQ(rsa.bits, 3072);
  EXPECT_EQ(rsa.fingerprint, "SHA256:AdN87m5yjBv07uczHgHDh3PqmMCm9lov5T8GPz7p/vs");
}

TEST(SshKeys, RefusesWeakMalformedAndMismatchedKeys) {
  EXPECT_NE(Why(kRsa2048).find("2048 bits: at least 3072"), std::string::npos);
  EXPECT_NE(Why("ssh-dss AAAAB3NzaC1kc3M= x").find("accepted are"), std::string::npos);
  EXPECT_NE(Why("hello").find("not an OpenSSH public key"), std::string::npos);
  EXPECT_NE(Why("ssh-ed25519 !!!notbase64").find("not base64"), std::string::npos);
  // The line says ed25519, the key inside is RSA.
  std::string swapped = kRsa3072;
  swapped.replace(0, 7, "ssh-ed25519");
  EXPECT_NE(Why(swapped).find("disagree"), std::string::npos);
  EXPECT_NE(Why(std::string(kEd25519) + "\nssh-ed25519 AAAA").find("one line"), std::string::npos);
  // Truncated key material.
  std::string cut = kEd25519;
  cut = cut.substr(0, cut.find(' ', 12)).substr(0, 40);
  EXPECT_NE(Why(cut).find("not a valid ed25519 key"), std::string::npos);
}

TEST(SshKeys, GeneratedPairsAreEd25519InOpenSshFormats) {
  const auto pair = GenerateSshKeyPair("made-by-spillway");
  std::string why;
  const auto again = ParseSshPublicKey(pair.public_key.Line(), &why);
  ASSERT_TRUE(again) << why;
  EXPECT_EQ(again->fingerprint, pair.public_key.fingerprint);
  EXPECT_EQ(pair.private_key.rfind("-----BEGIN OPENSSH PRIVATE KEY-----\n", 0), 0u);
  EXPECT_NE(pair.private_key.find("-----END OPENSSH PRIVATE KEY-----\n"), std::string::npos);
  EXPECT_NE(GenerateSshKeyPair("x").public_key.fingerprint, pair.public_key.fingerprint);
}
