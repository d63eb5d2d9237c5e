// Every billing route's fields, swept with values that parse but mean nothing or lie past their
// documented range (apiserver/openapi.yaml): a null where a value is required, amounts past
// $1,000,000,000,000.00, prices past $100,000 a GPU-hour, tax rates outside 0-10000 basis points,
// periods before the first month anything could have been billed or after the current one. Each is
// 422 naming the field, and changes nothing; no parseable input is ever a 5xx.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "core/clock.hpp"
#include "tests/e2e/fleet_support.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::test;

class BillingInput : public FleetTest {};

TEST_F(BillingInput, ValuesThatParseButMeanNothingAre422NamingTheField) {
  StartFleet(4);
  const std::string finance = fleet_->NewKey(fleet_->operator_tenant, "finance");
  const Month current = MonthOf(SystemClockInstance().Now());
  const std::string next = MonthOf(current.end).Label();
  const std::string credits = "/v1/billing/tenants/" + tenant_ + "/credits";
  const std::string limit = "/v1/tenants/" + tenant_ + "/spend-limit";
  const std::string profile = "/v1/tenants/" + tenant_ + "/billing-profile";
  const std::string future = FormatTime(SystemClockInstance().Now() + std::chrono::hours(48));
  struct Case {
    std::string method, path, key, body, field;
  };
  std::vector<Case> cases = {
      // Credits: at most $1e12, two decimals, a string; a reason.
      {"POST", credits, finance, R"({"amount":null,"reason":"x"})", "amount"},
      {"POST", credits, finance, R"({"amount":"1000000000000.01","reason":"x"})", "amount"},
      {"POST", credits, finance, R"({"amount":"9223372036854.78","reason":"x"})", "amount"},
      {"POST", credits, finance, R"({"amount":"0","reason":"x"})", "amount"},
      {"POST", credits, finance, R"({"amount":5,"reason":"x"})", "amount"},
      {"POST", credits, finance, R"({"amount":"1.001","reason":"x"})", "amount"},
      {"POST", credits, finance, R"({"amount":"1.00","reason":null})", "reason"},
      // Payment mode.
      {"PUT", "/v1/billing/tenants/" + tenant_ + "/mode", finance, R"({"mode":null})", "mode"},
      {"PUT", "/v1/billing/tenants/" + tenant_ + "/mode", finance, R"({"mode":"free"})", "mode"},
      // Spend limit (null means none; anything else must be an amount in range).
      {"PUT", limit, member_, R"({"monthly_limit":"1000000000000.01"})", "monthly_limit"},
      {"PUT", limit, member_, R"({"monthly_limit":"0"})", "monthly_limit"},
      {"PUT", limit, member_, R"({"monthly_limit":21474836.48})", "monthly_limit"},
      {"PUT", limit, member_, R"({})", "monthly_limit"},
      // Billing profile: replaced whole; a field left out takes its default, never null.
      {"PUT", profile, finance, R"({"tax_rate_bp":null})", "tax_rate_bp"},
      {"PUT", profile, finance, R"({"tax_rate_bp":-1})", "tax_rate_bp"},
      {"PUT", profile, finance, R"({"tax_rate_bp":10001})", "tax_rate_bp"},
      {"PUT", profile, finance, R"({"tax_rate_bp":12.5})", "tax_rate_bp"},
      {"PUT", profile, finance, R"({"tax_rate_bp":"2000"})", "tax_rate_bp"},
      {"PUT", profile, finance, R"({"legal_name":null})", "legal_name"},
      {"PUT", profile, finance, R"({"email":null})", "email"},
      // Prices: at most $100,000 a GPU-hour and $1,000,000 a GB-month, in the future.
      {"POST", "/v1/billing/prices", finance,
       R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"100000.000001","effective_from":")" + future + R"("})",
       "price_per_gpu_hour"},
      {"POST", "/v1/billing/prices", finance,
       R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":null,"effective_from":")" + future + R"("})",
       "price_per_gpu_hour"},
      {"POST", "/v1/billing/prices", finance,
       R"({"kind":"gpu","gpu_model":null,"price_per_gpu_hour":"2.00","effective_from":")" + future + R"("})", "gpu_model"},
      {"POST", "/v1/billing/prices", finance,
       R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"2.00","effective_from":null})", "effective_from"},
      {"POST", "/v1/billing/prices", finance,
       R"({"kind":"storage","price_per_gb_month":"1000000.000001","effective_from":")" + future + R"("})",
       "price_per_gb_month"},
      {"POST", "/v1/billing/prices", finance, R"({"kind":null})", "kind"},
      // Credit notes.
      {"POST", "/v1/billing/invoices/inv_none/credit-notes", finance, R"({"amount":null,"reason":"x"})", "amount"},
      {"POST", "/v1/billing/invoices/inv_none/credit-notes", finance, R"({"amount":"1000000000000.01","reason":"x"})",
       "amount"},
      {"POST", "/v1/billing/invoices/inv_none/credit-notes", finance, R"({"amount":"1.00","reason":null})", "reason"},
  };
  // Periods: before anything could have been billed, after the current month, or not a month.
  for (const std::string& period : std::vector<std::string>{"0000-01", "1999-12", next, "9999-12", "2026-13"}) {
    cases.push_back({"POST", "/v1/billing/periods/" + period + "/close", finance, "", "period"});
    cases.push_back({"GET", "/v1/billing/reports/revenue?period=" + period, finance, "", "period"});
    cases.push_back({"GET", "/v1/billing/exports/focus?period=" + period, finance, "", "period"});
    cases.push_back({"GET", "/v1/cost-export?period=" + period, member_, "", "period"});
    cases.push_back({"GET", "/v1/billing/invoices.csv?period=" + period, finance, "", "period"});
    cases.push_back({"GET", "/v1/billing/invoices?period=" + period, finance, "", "period"});
  }
  const std::string before = fleet_->Call("GET", "/v1/billing/balance?tenant_id=" + tenant_, finance).body;
  for (const auto& c : cases) {
    const auto r = fleet_->Call(c.method, c.path, c.key, c.body);
    EXPECT_EQ(r.status, 422) << c.method << " " << c.path << " " << c.body << ": " << r.body;
    if (r.status != 422) continue;
    const std::string message = Str(Json(r).at("error"), "message");
    EXPECT_EQ(message.rfind(c.field + ":", 0), 0u) << c.method << " " << c.path << " " << c.body << ": " << message;
  }
  // Nothing was written: no credit, no limit, no price, no closed period, the profile untouched.
  EXPECT_EQ(fleet_->Call("GET", "/v1/billing/balance?tenant_id=" + tenant_, finance).body.substr(0, 200),
            before.substr(0, 200));
  EXPECT_EQ(Json(fleet_->Call("GET", credits, finance)).at("data").as_array().size(), 0u);
  const std::string closed = fleet_->Call("GET", "/v1/billing/periods", finance).body;  // the leader's own close of last month
  for (const std::string& period : {std::string("0000-01"), std::string("1999-12"), next, std::string("9999-12")})
    EXPECT_EQ(closed.find("\"" + period + "\""), std::string::npos) << closed;
  EXPECT_EQ(Json(fleet_->Call("GET", profile, finance)).at("tax_rate_bp").as_int64(), 0);

  // The edges themselves are taken: the largest credit and limit, past 32 bits of cents, the largest
  // price, the current month; then one cent more credit is refused.
  auto r = fleet_->Call("PUT", limit, member_, R"({"monthly_limit":"21474836.48"})");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Str(Json(r), "monthly_limit"), "21474836.48");
  r = fleet_->Call("PUT", limit, member_, R"({"monthly_limit":"1000000000000.00"})");
  EXPECT_EQ(r.status, 200) << r.body;
  r = fleet_->Call("POST", credits, finance, R"({"amount":"1000000000000.00","reason":"the most"})");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(Str(Json(r).at("funds"), "credits"), "1000000000000.000000");
  r = fleet_->Call("POST", credits, finance, R"({"amount":"0.01","reason":"a cent more"})");
  EXPECT_EQ(r.status, 422) << r.body;
  EXPECT_EQ(Str(Json(r).at("error"), "message").rfind("amount:", 0), 0u) << r.body;
  EXPECT_EQ(fleet_->Call("POST", "/v1/billing/prices", finance,
                         R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"100000.000000","effective_from":")" +
                             future + R"("})")
                .status,
            201);
  EXPECT_EQ(fleet_->Call("GET", "/v1/billing/reports/revenue?period=" + current.Label(), finance).status, 200);

  // No parseable value of any of these fields is ever a 5xx.
  const std::vector<std::string> values = {"null", "true", "0", "-1", "1.5", "1e308", "-9223372036854775808",
                                           "18446744073709551616", "\"\"", "\"-0.00\"", "\"99999999999999.99\"",
                                           "\"0.000001\"", "\"1e3\"", "[]", "{}", "\"2026-02-30T00:00:00Z\""};
  const std::vector<std::tuple<std::string, std::string, std::string, std::string>> fields = {
      {"POST", credits, finance, "amount"},        {"PUT", limit, member_, "monthly_limit"},
      {"PUT", profile, finance, "tax_rate_bp"},   {"POST", "/v1/billing/prices", finance, "price_per_gpu_hour"},
      {"POST", "/v1/billing/prices", finance, "effective_from"},
      {"POST", "/v1/billing/invoices/inv_none/credit-notes", finance, "amount"}};
  for (const auto& [method, path, key, field] : fields)
    for (const auto& v : values) {
      std::string body = "{\"" + field + "\":" + v;
      if (path == credits || path.find("credit-notes") != std::string::npos) body += ",\"reason\":\"x\"";
      if (path == "/v1/billing/prices")
        body += field == "effective_from" ? R"(,"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"1.00")"
                                          : R"(,"kind":"gpu","gpu_model":"H100-80GB","effective_from":")" + future + "\"";
      body += "}";
      const auto res = fleet_->Call(method, path, key, body);
      EXPECT_LT(res.status, 500) << method << " " << path << " " << body << ": " << res.body;
    }
}
