// The price book through the API (docs/architecture.md, "Billing"): finance schedules a price from a
// future time, the catalog shows what is next, bad input changes nothing, and a restart never undoes
// a price finance set.
#include <gtest/gtest.h>

#include "core/clock.hpp"
#include "tests/e2e/fleet_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {
class PriceBookApi : public FleetTest {
 protected:
  void SetUp() override {
    StartFleet(8);
    finance_ = fleet_->NewKey(fleet_->operator_tenant, "finance");
  }
  boost::json::array Book() {
    const auto r = fleet_->Call("GET", "/v1/billing/prices", finance_);
    EXPECT_EQ(r.status, 200) << r.body;
    return Json(r).at("data").as_array();
  }
  std::string finance_;
};

std::string Later(std::chrono::hours h) { return FormatTime(NowMs() + h); }
}  // namespace

TEST_F(PriceBookApi, FinanceSchedulesAPriceChangeThatTheCatalogShowsAndARestartKeeps) {
  const auto before = Book();
  bool h100 = false, storage = false;
  for (const auto& e : before) {
    if (Str(e, "kind") == "gpu" && Str(e, "gpu_model") == "H100-80GB") {
      h100 = true;
      EXPECT_EQ(Str(e, "price_per_gpu_hour"), "2.490000");  // config/spillway.toml's
      EXPECT_EQ(Str(e, "status"), "current");
    }
    if (Str(e, "kind") == "storage") {
      storage = true;
      EXPECT_EQ(Str(e, "price_per_gb_month"), "0.100000");
    }
  }
  EXPECT_TRUE(h100 && storage) << boost::json::serialize(before);

  const std::string from = Later(2h);
  const std::string body =
      R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"2.100000","effective_from":")" + from + "\"}";
  auto r = fleet_->Call("POST", "/v1/billing/prices", finance_, body, {{"Idempotency-Key", "h100-cut"}});
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(Str(Json(r), "status"), "scheduled");
  EXPECT_EQ(Str(Json(r), "effective_from"), FormatTime(*ParseTime(from)));
  // The same request again is the same answer, not a second change; another key at that time is 409.
  EXPECT_EQ(fleet_->Call("POST", "/v1/billing/prices", finance_, body, {{"Idempotency-Key", "h100-cut"}}).status, 201);
  r = fleet_->Call("POST", "/v1/billing/prices", finance_, body);
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_NE(r.body.find("price_exists"), std::string::npos);
  r = fleet_->Call("POST", "/v1/billing/prices", fleet_->admin,
                   R"({"kind":"storage","price_per_gb_month":"0.080000","effective_from":")" + Later(3h) + "\"}");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(Book().size(), before.size() + 2);

  // The catalog: the price now, and the next one with when.
  const auto types = Json(fleet_->Call("GET", "/v1/instance-types", member_)).at("data").as_array();
  for (const auto& t : types) {
    if (Str(t, "gpu_model") != "H100-80GB") {
      EXPECT_TRUE(t.at("next_on_demand_price").is_null()) << t;
      continue;
    }
    EXPECT_EQ(Str(t, "on_demand_price_per_gpu_hour"), "2.490000");
    EXPECT_EQ(Str(t.at("next_on_demand_price"), "price_per_gpu_hour"), "2.100000");
    EXPECT_EQ(Str(t.at("next_on_demand_price"), "effective_from"), FormatTime(*ParseTime(from)));
  }
  // Audited, with what was set.
  const auto audit = Json(fleet_->Call("GET", "/v1/audit?action=price.schedule_gpu", fleet_->admin)).at("data").as_array();
  ASSERT_EQ(audit.size(), 1u);
  EXPECT_EQ(Str(audit[0], "target"), "H100-80GB=2.100000@" + FormatTime(*ParseTime(from)));

  // A restart seeds nothing over what finance set: the book is as it was.
  const auto book = Book();
  server_->Restart();
  ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
  EXPECT_EQ(Book(), book);
}

TEST_F(PriceBookApi, BadInputIsA422NamingTheFieldAndChangesNothingAndOnlyFinanceOrAdminMaySet) {
  const auto before = Book();
  const std::string gpu = R"({"kind":"gpu","gpu_model":"H100-80GB","effective_from":")" + Later(1h) + R"(","price_per_gpu_hour":)";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {gpu + R"("-1.000000"})", "price_per_gpu_hour:"},
      {gpu + R"("0"})", "price_per_gpu_hour:"},
      {gpu + R"("0.000000"})", "price_per_gpu_hour:"},
      {gpu + R"("1.0000001"})", "price_per_gpu_hour:"},
      {gpu + R"("1e3"})", "price_per_gpu_hour:"},
      {gpu + R"("NaN"})", "price_per_gpu_hour:"},
      {gpu + R"("1234567890123456789012345678901234567890"})", "price_per_gpu_hour:"},
      {gpu + R"(2.49})", "price_per_gpu_hour:"},
      {R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"2.000000","effective_from":")" + Later(-1h) + "\"}",
       "effective_from:"},
      {R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"2.000000","effective_from":"tomorrow"})",
       "effective_from:"},
      {R"({"kind":"gpu","gpu_model":"Z9","price_per_gpu_hour":"2.000000","effective_from":")" + Later(1h) + "\"}",
       "gpu_model:"},
      {R"({"kind":"fpga","price_per_gpu_hour":"2.000000","effective_from":")" + Later(1h) + "\"}", "kind:"},
      {R"({"kind":"storage","price_per_gb_month":"0.1","effective_from":")" + Later(1h) + R"(","gpu_model":"H100-80GB"})",
       "gpu_model"},
  };
  for (const auto& [body, field] : cases) {
    const auto r = fleet_->Call("POST", "/v1/billing/prices", finance_, body);
    EXPECT_TRUE(r.status == 422 || r.status == 400) << body << " -> " << r.status << " " << r.body;
    EXPECT_NE(r.body.find(field), std::string::npos) << body << " -> " << r.body;
  }
  EXPECT_EQ(Book(), before);
  const std::string ok = R"({"kind":"storage","price_per_gb_month":"0.1","effective_from":")" + Later(1h) + "\"}";
  EXPECT_EQ(fleet_->Call("POST", "/v1/billing/prices", member_, ok).status, 403);
  EXPECT_EQ(fleet_->Call("POST", "/v1/billing/prices", fleet_->operator_key, ok).status, 403);
  EXPECT_EQ(fleet_->Call("GET", "/v1/billing/prices", member_).status, 403);
  EXPECT_EQ(fleet_->Call("GET", "/v1/billing/prices", fleet_->operator_key).status, 200);
}
