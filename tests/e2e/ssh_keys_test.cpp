// /v1/ssh-keys: a tenant's public keys (checked, fingerprinted as ssh-keygen does), or a generated
// ed25519 pair whose private half is shown once and that the real ssh-keygen reads back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "tests/e2e/fleet_support.hpp"

using namespace spillway::test;

namespace {
const std::string kEd25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqzKrdyTTFE3V4KeapNNRa6weyLwwp99yqnlQ9XqnNG alice@laptop";
const std::string kEd25519Fingerprint = "SHA256:4hciI19E1kAf4DDXxqQiQF2wBuLEgYz7KO5qxJxpB0Q";
const std::string kRsa2048 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDoKBGvqphbnR436F4YmoIEFIUpiI3e/eLCM1eoWpSJ/ZXxxzoCyZoql8XbhH8SxYbBw1IqZTL2f3mKzPj/ojoqKcx1Opcnu90Byr67DwiU49pvSbhS49HTOQh0XJTYyj2WJAMyzuAcb2Rdpc0W599TnWj+9/FLBwaOUC0Su7DjbbmnzwZ9aLM/hhf/+OuufAIwnNNrGbtbrQPGfoYhJOXHtJgtkB0li59R4/l2F+5FF47UHp1dgBfmeewEJL+46qPqtUiskbZMPpmY2YQsJmGRMQ+XvU01WI6bIYgpWXsHO3AELBk90DXddfUi6OzBOdjaZhfKvsqWOSddXeFu/oz5 rsa2048";
std::string Body(const std::string& name, const std::string& key) {
  return R"({"name":")" + name + R"(","public_key":")" + key + R"("})";
}
}  // namespace

class SshKeys : public FleetTest {
 protected:
  void SetUp() override { StartFleet(8); }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "") {
    return fleet_->Call(method, path, key, body);
  }
};

TEST_F(SshKeys, AMemberAddsListsAndDeletesItsKeys) {
  auto r = Call("POST", "/v1/ssh-keys", member_, Body("laptop", kEd25519));
  ASSERT_EQ(r.status, 201) << r.body;
  const auto added = Json(r);
  EXPECT_EQ(Str(added, "fingerprint"), kEd25519Fingerprint);
  EXPECT_EQ(Str(added, "type"), "ssh-ed25519");
  EXPECT_EQ(Str(added, "public_key"), kEd25519);
  EXPECT_EQ(added.as_object().count("private_key"), 0u);
  const std::string id = Str(added, "id");
  // The same key again, or another key under the same name: 409, nothing added.
  r = Call("POST", "/v1/ssh-keys", member_, Body("desktop", kEd25519));
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_NE(r.body.find("laptop"), std::string::npos);
  // Bad keys: 422 naming the field and the reason.
  r = Call("POST", "/v1/ssh-keys", member_, Body("old", kRsa2048));
  EXPECT_EQ(r.status, 422);
  EXPECT_NE(r.body.find("public_key: is an RSA key of 2048 bits"), std::string::npos) << r.body;
  EXPECT_EQ(Call("POST", "/v1/ssh-keys", member_, Body("junk", "ssh-ed25519 AAAA")).status, 422);
  EXPECT_EQ(Call("POST", "/v1/ssh-keys", member_, R"({"name":"both","public_key":")" + kEd25519 + R"(","generate":true})").status, 422);
  EXPECT_EQ(Call("POST", "/v1/ssh-keys", member_, R"({"name":"none"})").status, 422);

  auto list = Json(Call("GET", "/v1/ssh-keys", member_));
  ASSERT_EQ(list.at("data").as_array().size(), 1u);
  EXPECT_EQ(Str(Json(Call("GET", "/v1/ssh-keys/" + id, member_)), "name"), "laptop");

  // Another tenant sees none of it; an admin names the tenant.
  const std::string other = fleet_->NewKey(fleet_->NewTenant("other", 1), "member");
  EXPECT_EQ(Json(Call("GET", "/v1/ssh-keys", other)).at("data").as_array().size(), 0u);
  EXPECT_EQ(Call("GET", "/v1/ssh-keys/" + id, other).status, 404);
  EXPECT_EQ(Call("DELETE", "/v1/ssh-keys/" + id, other).status, 404);
  EXPECT_EQ(Call("GET", "/v1/ssh-keys", fleet_->admin).status, 400);
  EXPECT_EQ(Json(Call("GET", "/v1/ssh-keys?tenant_id=" + tenant_, fleet_->admin)).at("data").as_array().size(), 1u);
  EXPECT_EQ(Call("GET", "/v1/ssh-keys", fleet_->operator_key).status, 403);

  EXPECT_EQ(Call("DELETE", "/v1/ssh-keys/" + id, member_).status, 200);
  EXPECT_EQ(Call("GET", "/v1/ssh-keys/" + id, member_).status, 404);
  EXPECT_EQ(Call("DELETE", "/v1/ssh-keys/" + id, member_).status, 404);
  // Its fingerprint is free again.
  EXPECT_EQ(Call("POST", "/v1/ssh-keys", member_, Body("laptop", kEd25519)).status, 201);
}

TEST_F(SshKeys, AGeneratedKeyIsShownOnceAndSshKeygenReadsIt) {
  const auto r = Call("POST", "/v1/ssh-keys", member_, R"({"name":"generated","generate":true})");
  ASSERT_EQ(r.status, 201) << r.body;
  const auto j = Json(r);
  const std::string private_key = Str(j, "private_key");
  char dir[] = "/tmp/spw-ssh-XXXXXX";
  ASSERT_TRUE(::mkdtemp(dir));
  const std::string path = std::string(dir) + "/id_ed25519";
  {
    std::ofstream(path) << private_key;
  }
  ::chmod(path.c_str(), 0600);
  std::string out;
  ASSERT_EQ(RunCommand({"/usr/bin/ssh-keygen", "-y", "-f", path}, {}, &out), 0) << out;
  // ssh-keygen derives the same public key from the private half (its comment aside).
  EXPECT_EQ(out.substr(0, out.rfind(' ')), Str(j, "public_key").substr(0, Str(j, "public_key").rfind(' ')));
  ASSERT_EQ(RunCommand({"/usr/bin/ssh-keygen", "-l", "-f", path}, {}, &out), 0) << out;
  EXPECT_NE(out.find(Str(j, "fingerprint")), std::string::npos) << out;
  RunCommand({"/bin/rm", "-rf", dir}, {}, nullptr);
  // Never again: reads show the public half only.
  const auto again = Json(Call("GET", "/v1/ssh-keys/" + Str(j, "id"), member_));
  EXPECT_EQ(again.as_object().count("private_key"), 0u);
}
