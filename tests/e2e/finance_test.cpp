// The finance story (README, "Finance"), through the real apiserver and a simulated agent: the fleet
// runs and a member's draft grows; finance sets the tenant's tax rate, schedules a price change,
// closes last month on demand; the invoice is finalized with its number and hash; its CSV matches its
// JSON to the cent; a credit note is issued; bad money is refused naming the field.
//
// Last month cannot be run live, so its usage is stored as the ingest would have stored it (samples of
// one instance on the live host, inside its hold, and the on-demand prices then in effect); from
// there the real server folds, rates, drafts and closes it.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "core/clock.hpp"
#include "core/crypto.hpp"
#include "core/db.hpp"
#include "core/ids.hpp"
#include "provisioning/hosts.hpp"
#include "tests/e2e/fleet_support.hpp"
#include "tests/support/focus_check.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {

// Cents of a decimal string "12.34" / "-0.05".
std::int64_t Cents(const std::string& s) {
  const bool neg = !s.empty() && s[0] == '-';
  const std::string t = neg ? s.substr(1) : s;
  const auto dot = t.find('.');
  const std::int64_t v = std::stoll(t.substr(0, dot)) * 100 + std::stoll(t.substr(dot + 1));
  return neg ? -v : v;
}

// The text pdftotext (poppler-utils) finds in `pdf`, which is kept as a test artifact.
std::string PdfText(const std::string& pdf, const std::string& name) {
  const char* dir = std::getenv("SPILLWAY_TEST_ARTIFACTS");
  const std::string base = std::string(dir ? dir : "/tmp") + "/" + name;
  std::ofstream(base + ".pdf", std::ios::binary) << pdf;
  std::string out;
  EXPECT_EQ(RunCommand({"/usr/bin/pdftotext", "-layout", base + ".pdf", base + ".txt"}, {}, &out), 0) << out;
  const std::string text = ReadWhole(base + ".txt");
  std::string words;  // runs of blanks as one space: "Total USD      6.00" -> "Total USD 6.00"
  for (char c : text)
    if (c != ' ' || (!words.empty() && words.back() != ' ')) words += c;
  return words;
}

}  // namespace

class Finance : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = std::make_unique<TestDb>();
    conn_ = OpenSession({db_->dsn(), "spillway-test", std::chrono::milliseconds(3000), std::chrono::milliseconds(30000)});
    tenant_ = NewId("ten");
    Exec("INSERT INTO tenants (id, name, gpu_quota) VALUES ($1, 'acme', 4)", tenant_);
    SeedLastMonth();
    auto env = FastFleetEnv();
    env["SPILLWAY_METERING_ROLLUP_INTERVAL"] = "1s";
    // The leader waits this long for a host behind before it closes a month by itself (the story
    // closes it on demand first, whatever day of the month it runs).
    env["SPILLWAY_BILLING_CLOSE_MAX_WAIT"] = "2000h";
    env["SPILLWAY_BILLING_ISSUER_NAME"] = "Spare GPU Co";
    env["SPILLWAY_BILLING_ISSUER_TAX_ID"] = "EU-123";
    server_ = std::make_unique<ApiServer>(db_->dsn(), env);
    ASSERT_TRUE(server_->WaitReady()) << server_->process().Stderr();
    fleet_ = std::make_unique<Fleet>(*db_, *server_);
    member_ = fleet_->NewKey(tenant_, "member");
    finance_ = fleet_->NewKey(fleet_->operator_tenant, "finance");
  }
  // Last month, before the server starts (else its leader closes the month, nothing having run in
  // it): an instance of the tenant ran 11:00-13:00 on the 15th on a host since retired (it reported
  // up to 13:05 and no more), at $2.00 an H100-hour until noon and $3.00 from noon; its samples
  // (one every 10 s) were stored, as ingest stores them, inside its hold.
  void SeedLastMonth() {
    const Month last = MonthOf(MonthOf(SystemClockInstance().Now()).begin - std::chrono::milliseconds(1));
    const std::string day15 = last.Label() + "-15";
    retired_host_ = InTransaction(*conn_, [&](Tx& tx) {
      return RegisterHost(tx, {"retired-1", "eu-west", "eu-west-a", {{0, 80LL << 30, "GPU-retired-0", "H100-80GB"}}},
                          *ParseTime(last.Label() + "-01T00:00:00Z"))
          .host_id;
    });
    const std::string t1100 = day15 + "T11:00:00Z", t1200 = day15 + "T12:00:00Z", t1300 = day15 + "T13:00:00Z",
                      t1305 = day15 + "T13:05:00Z";
    Exec("INSERT INTO host_watermarks (host_id, sampled_through, last_batch_seq, last_batch_at, clock_skew_ms, "
         "folded_through) VALUES ($1, $2::timestamptz, 3, $2::timestamptz, 0, $2::timestamptz)",
         retired_host_, t1305);
    Exec("INSERT INTO prices (gpu_model, market, price_micros_per_gpu_hour, effective_from) VALUES "
         "('H100-80GB', 'on_demand', 2000000, $1::timestamptz), ('H100-80GB', 'on_demand', 3000000, $2::timestamptz)",
         last.Label() + "-01T00:00:00Z", t1200);
    Exec("INSERT INTO instances (id, tenant_id, name, instance_type, gpu_model, gpus, region, market, state, host_id, "
         "started_at, ended_at, end_reason) VALUES ('ins_lastmonth', $1, 'train-7b', 'h100.1x', 'H100-80GB', 1, "
         "'eu-west', 'on_demand', 'terminated', $2, $3::timestamptz, $4::timestamptz, 'terminated')",
         tenant_, retired_host_, t1100, t1300);
    Exec("INSERT INTO gpu_allocation_history (instance_id, host_id, gpu_index, allocated_at, released_at) VALUES "
         "('ins_lastmonth', $1, 0, $2::timestamptz, $3::timestamptz)",
         retired_host_, t1100, t1300);
    Exec("SELECT usage_samples_partition($1::timestamptz)", day15 + "T00:00:00Z");
    Exec("INSERT INTO usage_samples (ts, host_id, gpu_index, instance_id, interval_ms, util_pct, mem_used_bytes, power_mw, "
         "energy_mj) SELECT ts, $1, 0, 'ins_lastmonth', 10000, 90, 1073741824, 600000, 6000000 FROM "
         "generate_series($2::timestamptz, $3::timestamptz, interval '10 seconds') AS ts",
         retired_host_, day15 + "T11:00:10Z", t1300);
    Exec("INSERT INTO usage_dirty_hours (hour, marked_at) VALUES ($1::timestamptz, now()), ($2::timestamptz, now()) "
         "ON CONFLICT DO NOTHING",
         t1100, t1200);
  }
  template <class... Params>
  void Exec(const std::string& sql, const Params&... params) {
    ExecSql(*conn_, sql, params...);
  }
  template <class... Params>
  std::string One(const std::string& sql, const Params&... params) {
    return SqlValue(*conn_, sql, params...);
  }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "", std::map<std::string, std::string> headers = {}) {
    return fleet_->Call(method, path, key, body, std::move(headers));
  }
  std::unique_ptr<TestDb> db_;
  std::unique_ptr<ApiServer> server_;
  std::unique_ptr<Fleet> fleet_;
  std::unique_ptr<pqxx::connection> conn_;
  std::string tenant_, member_, finance_, retired_host_;
};

TEST_F(Finance, TheFinanceStory) {
  const Month now = MonthOf(SystemClockInstance().Now());
  const Month last = MonthOf(now.begin - 1ms);
  const std::string this_period = now.Label(), last_period = last.Label();

  // Finance sets the buyer's details and a 20 % tax rate.
  auto r = Call("PUT", "/v1/tenants/" + tenant_ + "/billing-profile", finance_,
                R"({"legal_name":"Acme Research Ltd","address":"1 Main St","tax_id":"GB999","email":"ap@acme.example","tax_rate_bp":2000})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("tax_rate_bp").as_int64(), 2000);
  EXPECT_EQ(Call("PUT", "/v1/tenants/" + tenant_ + "/billing-profile", member_, "{}").status, 403);
  EXPECT_EQ(Call("PUT", "/v1/tenants/" + tenant_ + "/billing-profile", finance_, R"({"tax_rate_bp":10001})").status, 422);
  EXPECT_EQ(Str(Json(Call("GET", "/v1/tenants/" + tenant_ + "/billing-profile", member_)), "legal_name"),
            "Acme Research Ltd");

  // The fleet runs; the member's instance runs, and its draft for this month grows.
  auto agent = fleet_->StartAgent("eu-north", "H100-80GB", 1, 2);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("eu-north", "H100-80GB", "total_gpus") == 2; }, 20s));
  r = Call("POST", "/v1/instances", member_, R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string running = Str(Json(r), "id");
  ASSERT_TRUE(fleet_->WaitState(member_, running, "running"));
  const auto draft_hours = [&]() -> std::string {
    const auto list = Json(Call("GET", "/v1/invoices", member_));
    if (list.at("data").as_array().empty()) return "";
    const auto& inv = list.at("data").as_array()[0];
    if (Str(inv, "period") != this_period || Str(inv, "status") != "draft") return "";
    for (const auto& l : inv.at("lines").as_array())
      if (Str(l, "kind") == "usage" && Str(l, "instance_id") == running) return Str(l, "gpu_hours");
    return "";
  };
  std::string first;
  ASSERT_TRUE(WaitFor([&] { return !(first = draft_hours()).empty(); }, 30s)) << "no draft for " << this_period;
  std::string later;
  ASSERT_TRUE(WaitFor([&] { return (later = draft_hours()) > first; }, 30s)) << first << " never grew";

  // Finance schedules a price change (from tomorrow: a past time is refused).
  r = Call("POST", "/v1/billing/prices", finance_,
           R"({"kind":"gpu","gpu_model":"H100-80GB","price_per_gpu_hour":"2.750000","effective_from":")" +
               FormatTime(SystemClockInstance().Now() + 24h) + "\"}");
  EXPECT_EQ(r.status, 201) << r.body;

  // Samples ending 11:00:10-11:59:50 at $2.00 (3,590,000 ms), 12:00:00-13:00:00 at $3.00 (3,610,000):
  // 18,010,000,000,000 µ$·ms/h = $5.0027...: $5.00; tax 20 %: $1.00; total $6.00.
  boost::json::value draft;
  ASSERT_TRUE(WaitFor(
      [&] {
        const auto list = Json(Call("GET", "/v1/billing/invoices?period=" + last_period + "&tenant_id=" + tenant_, finance_));
        if (list.at("data").as_array().empty()) return false;
        draft = list.at("data").as_array()[0];
        return Str(draft, "total") == "6.00";
      },
      30s))
      << draft << " rated: " << One("SELECT count(*) || '/' || coalesce(sum(gpu_ms), 0) FROM usage_rated_hourly WHERE instance_id = 'ins_lastmonth'")
      << " marks: " << One("SELECT string_agg(tenant_id || ' ' || period, ', ') FROM billing_dirty")
      << " dirty hours: " << One("SELECT string_agg(hour::text, ', ') FROM usage_dirty_hours")
      << " invoices: " << One("SELECT string_agg(period || ' ' || status || ' ' || total_cents, ', ') FROM invoices")
      << "\n" << server_->process().Stderr().substr(server_->process().Stderr().size() > 6000 ? server_->process().Stderr().size() - 6000 : 0);
  EXPECT_EQ(Str(draft, "status"), "draft");
  EXPECT_TRUE(draft.at("number").is_null());

  // Finance closes last month on demand: finalized, numbered, hashed.
  r = Call("POST", "/v1/billing/periods/" + last_period + "/close", finance_);
  ASSERT_EQ(r.status, 200) << r.body;
  const auto closed = Json(r);
  EXPECT_FALSE(closed.at("already_closed").as_bool());
  // The retired host never reported past the month's end: the leader would have waited for it up to
  // billing.close_max_wait; closed on demand, the month and the invoice say so.
  EXPECT_TRUE(closed.at("incomplete").as_bool()) << closed;
  EXPECT_EQ(closed.at("hosts_behind").as_array().size(), 1u);
  EXPECT_EQ(closed.at("hosts_behind").as_array()[0].as_string(), retired_host_);
  EXPECT_EQ(closed.at("invoices").as_int64(), 1);
  r = Call("POST", "/v1/billing/periods/" + last_period + "/close", finance_);
  EXPECT_TRUE(Json(r).at("already_closed").as_bool()) << r.body;
  EXPECT_EQ(Call("POST", "/v1/billing/periods/" + this_period + "/close", finance_).status, 409);  // not ended
  EXPECT_EQ(Call("POST", "/v1/billing/periods/2026-13/close", finance_).status, 422);
  EXPECT_EQ(Call("POST", "/v1/billing/periods/" + last_period + "/close", member_).status, 403);

  const std::string id = Str(draft, "id");
  auto inv = Json(Call("GET", "/v1/invoices/" + id, member_));
  EXPECT_EQ(Str(inv, "status"), "finalized");
  EXPECT_EQ(Str(inv, "number"), "SPW-000001");
  EXPECT_EQ(Str(inv, "subtotal"), "5.00");
  EXPECT_EQ(Str(inv, "tax"), "1.00");
  EXPECT_EQ(Str(inv, "total"), "6.00");
  EXPECT_EQ(Str(inv.at("buyer"), "legal_name"), "Acme Research Ltd");
  EXPECT_EQ(Str(inv.at("issuer"), "legal_name"), "Spare GPU Co");
  EXPECT_EQ(Str(inv.at("issuer"), "tax_id"), "EU-123");
  EXPECT_EQ(Str(inv, "coverage"), "1.0000");
  EXPECT_TRUE(inv.at("closed_incomplete").as_bool());
  EXPECT_EQ(Str(inv, "usage_complete_through"), last_period + "-15T13:05:00.000Z");
  const auto& lines = inv.at("lines").as_array();
  ASSERT_EQ(lines.size(), 2u) << inv;
  EXPECT_EQ(Str(lines[0], "kind"), "usage");
  EXPECT_EQ(Str(lines[0], "instance_id"), "ins_lastmonth");
  EXPECT_EQ(Str(lines[0], "gpu_hours"), "2.000000");
  EXPECT_EQ(Str(lines[0], "unit_price"), "2.501389");  // 18,010,000,000,000 / 7,200,000 ms
  EXPECT_EQ(Str(lines[0], "average_price_per_gpu_hour"), "2.501389");  // docs/protocol.md's name
  EXPECT_EQ(Str(lines[0], "amount"), "5.00");
  EXPECT_EQ(Str(lines[1], "kind"), "tax");
  EXPECT_EQ(Str(lines[1], "quantity"), "20.00");
  EXPECT_EQ(Str(lines[1], "amount"), "1.00");
  // The hash is the SHA-256 of the canonical JSON the database keeps, which holds the number.
  const std::string canonical = One("SELECT canonical FROM invoices WHERE id = $1", id);
  EXPECT_EQ(Str(inv, "sha256"), Sha256Hex(canonical));
  EXPECT_NE(canonical.find("\"number\":\"SPW-000001\""), std::string::npos);
  // Those exact bytes are served: the README's recipe checks the hash with sha256sum alone.
  r = Call("GET", "/v1/invoices/" + id + "?format=canonical", member_);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, canonical);
  EXPECT_EQ(r.Header("content-type"), "application/vnd.spillway.invoice.canonical+json");
  EXPECT_EQ(Call("GET", "/v1/invoices/" + id, member_, "", {{"Accept", "application/vnd.spillway.invoice.canonical+json"}}).body,
            canonical);
  EXPECT_EQ(Call("GET", "/v1/invoices/" + id + "?format=xml", member_).status, 422);
  {
    std::ifstream readme(std::string(SPILLWAY_SOURCE_DIR) + "/README.md");
    std::stringstream text;
    text << readme.rdbuf();
    const std::string all = text.str();
    const auto mark = all.find("<!-- verify-invoice-hash -->\n```sh\n");
    ASSERT_NE(mark, std::string::npos) << "the README's recipe is gone";
    const auto from = all.find('\n', all.find("```sh", mark)) + 1;
    const std::string recipe = all.substr(from, all.find("```", from) - from);
    const std::map<std::string, std::string> env = {{"API", "http://127.0.0.1:" + std::to_string(server_->port())},
                                                    {"MEMBER_KEY", member_}, {"INVOICE", id}};
    std::string out;
    EXPECT_EQ(RunCommand({"/bin/bash", "-c", "exec 1>&2\n" + recipe}, env, &out), 0) << recipe << out;
    EXPECT_NE(out.find("-: OK"), std::string::npos) << out;
    // A hash that is not the invoice's fails it.
    const std::string wrong = "SHA=" + std::string(64, '0') + "\n" + recipe.substr(recipe.find('\n') + 1);
    EXPECT_NE(RunCommand({"/bin/bash", "-c", "exec 1>&2\n" + wrong}, env, &out), 0) << out;
  }

  {  // Finance's audit recomputes the closed month from the stored samples: nothing differs.
    std::string out;
    EXPECT_EQ(RunCommand({SPILLWAY_APISERVER_BIN, "verify-invoices", "--period", last_period},
                         {{"SPILLWAY_DATABASE_URL", db_->dsn()}}, &out),
              0)
        << out;
    EXPECT_NE(out.find(last_period + ": 1 invoice(s), 1 usage line(s), 7200000 GPU-ms stored, 7200000 of them on "
                                      "finalized invoices; 0 mismatch(es)"),
              std::string::npos)
        << out;
  }

  // Its CSV matches its JSON to the cent, and so does finance's export of the month.
  r = Call("GET", "/v1/invoices/" + id, member_, "", {{"Accept", "text/csv"}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-type"), "text/csv; charset=utf-8");
  auto rows = ParseCsv(r.body);
  ASSERT_EQ(rows.size(), 3u) << r.body;
  EXPECT_EQ(rows[0][0], "invoice_id");
  ASSERT_EQ(rows[0].size(), 17u);
  std::int64_t csv_total = 0;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i][1], "SPW-000001");
    EXPECT_EQ(rows[i][15], Str(lines[i - 1], "amount"));
    csv_total += Cents(rows[i][15]);
  }
  EXPECT_EQ(csv_total, Cents(Str(inv, "total")));
  const auto month_csv = Call("GET", "/v1/billing/invoices.csv?period=" + last_period, finance_);
  ASSERT_EQ(month_csv.status, 200);
  EXPECT_EQ(ParseCsv(month_csv.body), rows);
  EXPECT_EQ(Call("GET", "/v1/billing/invoices.csv", finance_).status, 422);  // which month?

  // A credit note of $1.50 before tax: $0.30 tax, $1.80 back. Sent twice under one key: one note.
  const std::map<std::string, std::string> key = {{"Idempotency-Key", "cn-acme-1"}};
  r = Call("POST", "/v1/billing/invoices/" + id + "/credit-notes", finance_, R"({"amount":"1.50","reason":"SLA breach"})", key);
  ASSERT_EQ(r.status, 201) << r.body;
  const auto note = Json(r);
  EXPECT_EQ(Str(note, "number"), "SPW-CN-000001");
  EXPECT_EQ(Str(note, "tax"), "0.30");
  EXPECT_EQ(Str(note, "total"), "1.80");
  r = Call("POST", "/v1/billing/invoices/" + id + "/credit-notes", finance_, R"({"amount":"1.50","reason":"SLA breach"})", key);
  EXPECT_EQ(Str(Json(r), "id"), Str(note, "id"));
  // Bad money is refused naming the field, and writes nothing.
  for (const char* bad : {"\"-1.00\"", "\"0\"", "\"0.00\"", "\"1.001\"", "\"1e2\"", "\"NaN\"", "\"Infinity\"", "1.5", "\"\"",
                          "\"1234567890123456789012345678901234567890\"", "\" 1.00\"", "\"1,00\"", "\"3.51\""}) {
    r = Call("POST", "/v1/billing/invoices/" + id + "/credit-notes", finance_,
             std::string(R"({"amount":)") + bad + R"(,"reason":"x"})");
    EXPECT_EQ(r.status, 422) << bad << ": " << r.body;
    EXPECT_NE(r.body.find("amount"), std::string::npos) << bad << ": " << r.body;
  }
  EXPECT_EQ(One("SELECT count(*) FROM credit_notes"), "1");
  EXPECT_EQ(Call("POST", "/v1/billing/invoices/" + id + "/credit-notes", member_, R"({"amount":"1.00","reason":"x"})").status, 403);
  inv = Json(Call("GET", "/v1/invoices/" + id, member_));
  EXPECT_EQ(inv.at("credit_notes").as_array().size(), 1u);
  EXPECT_EQ(Str(inv, "credited"), "1.80");
  EXPECT_EQ(Str(inv, "balance"), "4.20");
  EXPECT_EQ(Str(inv, "total"), "6.00");  // the invoice itself never changes
  // The rest, $3.50, gives back exactly what remains: $4.20.
  r = Call("POST", "/v1/billing/invoices/" + id + "/credit-notes", finance_, R"({"amount":"3.50","reason":"refund"})");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(Str(Json(r), "total"), "4.20");
  EXPECT_EQ(Str(Json(Call("GET", "/v1/invoices/" + id, member_)), "balance"), "0.00");
  rows = ParseCsv(Call("GET", "/v1/billing/invoices.csv?period=" + last_period, finance_).body);
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[3][6], "credit_note");
  EXPECT_EQ(rows[3][15], "-1.80");

  // The invoice as a PDF: the same bytes each time, and its text says what its JSON says.
  const auto pdf = Call("GET", "/v1/invoices/" + id, member_, "", {{"Accept", "application/pdf"}});
  ASSERT_EQ(pdf.status, 200) << pdf.body;
  EXPECT_EQ(pdf.Header("content-type"), "application/pdf");
  EXPECT_EQ(pdf.Header("content-disposition"), "attachment; filename=\"SPW-000001.pdf\"");
  EXPECT_EQ(Call("GET", "/v1/invoices/" + id + "?format=pdf", finance_).body, pdf.body);
  const std::string pdf_text = PdfText(pdf.body, "invoice-SPW-000001");
  const auto with_credits = Json(Call("GET", "/v1/invoices/" + id, member_));
  for (const std::string& want : {std::string("SPW-000001"), std::string("Spare GPU Co"), std::string("Acme Research Ltd"),
                                 std::string("EU-123"), std::string("GB999"), last_period,
                                 "Usage complete through " + last_period + "-15T13:05:00Z", Str(with_credits, "sha256")})
    EXPECT_NE(pdf_text.find(want), std::string::npos) << want << " not in:\n" << pdf_text;
  for (const auto& l : with_credits.at("lines").as_array())
    EXPECT_NE(pdf_text.find(Str(l, "amount")), std::string::npos) << Str(l, "kind") << " " << Str(l, "amount");
  EXPECT_NE(pdf_text.find("Total USD " + Str(with_credits, "total")), std::string::npos) << pdf_text;
  for (const auto& n : with_credits.at("credit_notes").as_array()) {
    EXPECT_NE(pdf_text.find(Str(n, "number")), std::string::npos);
    EXPECT_NE(pdf_text.find("-" + Str(n, "total")), std::string::npos);
  }
  EXPECT_NE(pdf_text.find("Balance due USD " + Str(with_credits, "balance")), std::string::npos) << pdf_text;
  EXPECT_EQ(pdf_text.find("DRAFT"), std::string::npos);
  // This month's draft says DRAFT.
  const auto drafts = Json(Call("GET", "/v1/invoices", member_));
  const std::string draft_id = Str(drafts.at("data").as_array().at(0), "id");
  const auto draft_pdf = Call("GET", "/v1/invoices/" + draft_id, member_, "", {{"Accept", "application/pdf"}});
  ASSERT_EQ(draft_pdf.status, 200);
  EXPECT_NE(PdfText(draft_pdf.body, "invoice-draft").find("DRAFT INVOICE"), std::string::npos);

  // The FOCUS 1.2 export of last month: the invoice's hours at each price and its tax, by FOCUS's
  // rules, adding up to the invoice; the credit notes were issued this month, so they are in this
  // month's export. Hour 11 holds 3,590,000 ms at $2.00 and the 10,000 ms ending 12:00:00 at $3.00.
  const auto focus_csv = Call("GET", "/v1/billing/exports/focus?period=" + last_period, finance_);
  ASSERT_EQ(focus_csv.status, 200) << focus_csv.body;
  EXPECT_EQ(focus_csv.Header("content-type"), "text/csv; charset=utf-8");
  const auto focus = test::ParseFocus(focus_csv.body);
  const auto violations = test::FocusViolations(focus);
  EXPECT_TRUE(violations.empty()) << violations.front() << "\n" << focus_csv.body;
  EXPECT_EQ(test::BilledCentsByInvoice(focus), (std::map<std::string, std::int64_t>{{id, 600}}));
  ASSERT_EQ(focus.rows.size(), 4u) << focus_csv.body;
  const auto& h11 = focus.rows[0];
  EXPECT_EQ(h11.at("ChargePeriodStart"), last_period + "-15T11:00:00Z");
  EXPECT_EQ(h11.at("ChargePeriodEnd"), last_period + "-15T12:00:00Z");
  EXPECT_EQ(h11.at("PricingQuantity"), "0.997222");
  EXPECT_EQ(h11.at("ListUnitPrice"), "2.000000");
  EXPECT_EQ(h11.at("ListCost"), "1.994444");
  EXPECT_EQ(h11.at("x_InvoiceNumber"), "SPW-000001");
  EXPECT_EQ(h11.at("SubAccountName"), "acme");
  EXPECT_EQ(h11.at("ResourceName"), "train-7b");
  EXPECT_EQ(h11.at("RegionId"), "eu-west");
  EXPECT_EQ(h11.at("InvoiceIssuerName"), "Spare GPU Co");
  // The line's $5.00 over $1.99444, $0.00833 and $3.00 exactly: 1.99, 0.01 (the largest remainder), 3.00.
  EXPECT_EQ(h11.at("BilledCost"), "1.99");
  EXPECT_EQ(focus.rows[1].at("BilledCost"), "0.01");
  EXPECT_EQ(focus.rows[1].at("ListUnitPrice"), "3.000000");
  EXPECT_EQ(focus.rows[2].at("BilledCost"), "3.00");
  EXPECT_EQ(focus.rows[2].at("ChargePeriodStart"), last_period + "-15T12:00:00Z");
  EXPECT_EQ(focus.rows[3].at("ChargeCategory"), "Tax");
  EXPECT_EQ(focus.rows[3].at("BilledCost"), "1.00");
  // The member's own export is the same rows; finance's is for finance only; a month is required.
  const auto own = Call("GET", "/v1/cost-export?period=" + last_period, member_);
  ASSERT_EQ(own.status, 200) << own.body;
  EXPECT_EQ(own.body, focus_csv.body);
  EXPECT_EQ(Call("GET", "/v1/billing/exports/focus?period=" + last_period, member_).status, 403);
  EXPECT_EQ(Call("GET", "/v1/billing/exports/focus", finance_).status, 422);
  EXPECT_EQ(test::ParseFocus(Call("GET", "/v1/cost-export?period=" + last_period, fleet_->NewKey(fleet_->NewTenant("nobody", 1), "member")).body).rows.size(), 0u);
  const auto this_month = test::ParseFocus(Call("GET", "/v1/billing/exports/focus?period=" + this_period, finance_).body);
  const auto month_violations = test::FocusViolations(this_month);
  EXPECT_TRUE(month_violations.empty()) << month_violations.front();
  const auto by_invoice = test::BilledCentsByInvoice(this_month);
  std::int64_t credited_back = 0;
  const auto with_notes = Json(Call("GET", "/v1/invoices/" + id, member_));
  for (const auto& n : with_notes.at("credit_notes").as_array())
    credited_back += by_invoice.at(Str(n, "id"));
  EXPECT_EQ(credited_back, -600);

  // The member sees this month's draft first, then last month's invoice; another tenant sees neither.
  const auto mine = Json(Call("GET", "/v1/invoices", member_));
  ASSERT_EQ(mine.at("data").as_array().size(), 2u);
  EXPECT_EQ(Str(mine.at("data").as_array()[0], "period"), this_period);
  EXPECT_EQ(Str(mine.at("data").as_array()[1], "number"), "SPW-000001");
  const std::string other = fleet_->NewKey(fleet_->NewTenant("other", 1), "member");
  EXPECT_EQ(Call("GET", "/v1/invoices/" + id, other).status, 404);
  EXPECT_TRUE(Json(Call("GET", "/v1/invoices", other)).at("data").as_array().empty());
  // Finance filters by status; the closed period is listed.
  const auto finals = Json(Call("GET", "/v1/billing/invoices?status=finalized", finance_));
  EXPECT_EQ(finals.at("data").as_array().size(), 1u);
  EXPECT_EQ(Json(Call("GET", "/v1/invoices?tenant=" + tenant_, finance_)).at("data").as_array().size(), 2u);
  const auto periods = Json(Call("GET", "/v1/billing/periods", finance_));
  EXPECT_EQ(Str(periods.at("data").as_array().at(0), "period"), last_period);

  // What selling the spare capacity earned last month (finance or an operator; not a member).
  const auto report = Json(Call("GET", "/v1/billing/reports/revenue?period=" + last_period, fleet_->operator_key));
  ASSERT_EQ(report.at("usage").as_array().size(), 1u) << report;
  const auto& sold = report.at("usage").as_array()[0];
  EXPECT_EQ(Str(sold, "region"), "eu-west");
  EXPECT_EQ(Str(sold, "market"), "on_demand");
  EXPECT_EQ(Str(sold, "gpu_hours_sold"), "2.000000");
  EXPECT_EQ(Str(sold, "revenue"), "5.00");
  EXPECT_EQ(Str(sold, "spot_discount_given"), "0.00");
  EXPECT_TRUE(report.at("closed").as_bool());
  EXPECT_EQ(Str(report.at("totals"), "revenue"), "5.00");
  const auto report_csv = Call("GET", "/v1/billing/reports/revenue?period=" + last_period + "&format=csv", finance_);
  EXPECT_NE(report_csv.body.find(last_period + ",eu-west,H100-80GB,on_demand,2.000000,5.00,5.00,0.00,"), std::string::npos)
      << report_csv.body;
  EXPECT_EQ(Call("GET", "/v1/billing/reports/revenue?period=" + last_period, member_).status, 403);

  // SREs see it.
  const auto metrics = Http(server_->admin_port(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find("spillway_period_close_seconds_count 1"), std::string::npos);
  EXPECT_NE(metrics.find("spillway_billed_micros_total{market=\"on_demand\"}"), std::string::npos);
  EXPECT_NE(metrics.find("spillway_billing_failures_total{step=\"billing_drafts\"} 0"), std::string::npos);
  EXPECT_TRUE(WaitFor([&] {
    return Http(server_->admin_port(), "GET", "/metrics").body.find("spillway_invoices{status=\"finalized\"} 1") !=
           std::string::npos;
  }, 30s));
  ASSERT_EQ(Call("DELETE", "/v1/instances/" + running, member_).status, 200);
}



// Finance's work from the `spillway` CLI (issue #22): the price book, scheduling a price, every
// tenant's invoices, closing last month, the closed periods, a credit note, the revenue report and
// the FOCUS export, each compared with the API's own answer; a member is refused (exit 1).
TEST_F(Finance, FinanceStaffWorkFromTheCli) {
  const Month last = MonthOf(MonthOf(SystemClockInstance().Now()).begin - 1ms);
  const std::string period = last.Label();
  char tmpl[] = "/tmp/spillway-cli-finance-XXXXXX";
  const std::string home = ::mkdtemp(tmpl);
  const std::string api = "http://127.0.0.1:" + std::to_string(server_->port());
  const std::map<std::string, std::string> as_finance = {{"SPILLWAY_API", api}, {"SPILLWAY_API_KEY", finance_}};
  const std::map<std::string, std::string> as_member = {{"SPILLWAY_API", api}, {"SPILLWAY_API_KEY", member_}};

  auto r = RunCli(home, {"billing", "prices", "--output", "csv"}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  auto rows = ParseCsv(r.out);
  ASSERT_GE(rows.size(), 2u) << r.out;
  EXPECT_EQ(rows[0][0], "kind");
  EXPECT_EQ(rows.size() - 1, Json(Call("GET", "/v1/billing/prices", finance_)).at("data").as_array().size());
  r = RunCli(home, {"billing", "set-price", "--gpu-model", "H100-80GB", "--price", "2.750000", "--effective-from",
                    FormatTime(SystemClockInstance().Now() + 24h)},
             as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(Str(boost::json::parse(r.out), "status"), "scheduled") << r.out;

  // Last month's draft appears (rated from the seeded samples), then finance closes the month.
  std::string id;
  ASSERT_TRUE(WaitFor(
      [&] {
        r = RunCli(home, {"billing", "invoices", "--period", period, "--tenant", tenant_, "--output", "csv"}, as_finance);
        rows = ParseCsv(r.out);
        if (r.rc != 0 || rows.size() != 2 || rows[1][5] != "5.00") return false;  // no tax profile here
        id = rows[1][0];
        return true;
      },
      30s))
      << r.out << r.err;
  EXPECT_EQ(rows[1][3], "draft");
  r = RunCli(home, {"billing", "close", period}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(boost::json::parse(r.out).at("invoices").as_int64(), 1);
  r = RunCli(home, {"billing", "periods", "--output", "csv"}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  rows = ParseCsv(r.out);
  ASSERT_EQ(rows.size(), 2u) << r.out;
  EXPECT_EQ(rows[1][0], period);

  // The member reads and downloads it: the CSV is the API's, byte for byte.
  r = RunCli(home, {"invoices", "get", id}, as_member);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(Str(boost::json::parse(r.out), "number"), "SPW-000001");
  r = RunCli(home, {"invoices", "download", id, "--format", "csv", "--out", home + "/invoice.csv"}, as_member);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(ReadWhole(home + "/invoice.csv"), Call("GET", "/v1/invoices/" + id, member_, "", {{"Accept", "text/csv"}}).body);
  r = RunCli(home, {"invoices", "download", id, "--out", home + "/invoice.pdf"}, as_member);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(ReadWhole(home + "/invoice.pdf").rfind("%PDF-", 0), 0u);
  r = RunCli(home, {"billing", "close", period}, as_member);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("HTTP 403"), std::string::npos) << r.err;

  r = RunCli(home, {"billing", "credit-note", id, "--amount", "1.50", "--reason", "goodwill"}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(Str(Json(Call("GET", "/v1/invoices/" + id, member_)), "balance"), "3.50");

  r = RunCli(home, {"billing", "revenue", "--period", period, "--output", "csv"}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, Call("GET", "/v1/billing/reports/revenue?period=" + period, finance_, "", {{"Accept", "text/csv"}}).body);
  r = RunCli(home, {"billing", "revenue", "--period", period, "--output", "table"}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("H100-80GB"), std::string::npos) << r.out;
  r = RunCli(home, {"billing", "export", "focus", "--period", period}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, Call("GET", "/v1/billing/exports/focus?period=" + period, finance_).body);
  // To a file: streamed into it, renamed once whole; a refused export leaves no file behind.
  r = RunCli(home, {"billing", "export", "focus", "--period", period, "--out", home + "/focus.csv"}, as_finance);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(ReadWhole(home + "/focus.csv"), Call("GET", "/v1/billing/exports/focus?period=" + period, finance_).body);
  EXPECT_FALSE(std::filesystem::exists(home + "/focus.csv.part"));
  r = RunCli(home, {"billing", "export", "focus", "--period", "2026-13", "--out", home + "/bad.csv"}, as_finance);
  EXPECT_NE(r.rc, 0);
  EXPECT_FALSE(std::filesystem::exists(home + "/bad.csv"));
  EXPECT_FALSE(std::filesystem::exists(home + "/bad.csv.part"));
  EXPECT_EQ(RunCli(home, {"billing", "export", "xlsx", "--period", period}, as_finance).rc, 2);
  std::filesystem::remove_all(home);
}


TEST_F(Finance, TheConsoleInARealBrowser) {
  // The web console as its users meet it, in Debian's Chromium (tests/browser/console.test.mjs, run
  // with node; ./scripts/test installs both): the member launches and watches the instance run, reads
  // the usage plot, downloads an invoice CSV equal to the API's; finance closes last month in the
  // page and issues a credit note; a member is refused a finance page; signing out in one tab ends the other's session; axe
  // finds no serious violation; every page is saved as a screenshot under SPILLWAY_TEST_ARTIFACTS.
  const std::string script = std::string(SPILLWAY_SOURCE_DIR) + "/tests/browser/console.test.mjs";
  ASSERT_TRUE(std::filesystem::exists("/usr/bin/chromium")) << "Debian's chromium is not installed (./scripts/test installs it)";
  ASSERT_TRUE(std::filesystem::exists(std::string(SPILLWAY_SOURCE_DIR) + "/tests/browser/node_modules/playwright-core"))
      << "run npm ci in tests/browser (./scripts/test does)";
  auto agent = fleet_->StartAgent("eu-north", "H100-80GB", 1, 2);
  ASSERT_TRUE(WaitFor([&] { return fleet_->PoolInt("eu-north", "H100-80GB", "total_gpus") == 2; }, 20s));
  const Month last = MonthOf(MonthOf(SystemClockInstance().Now()).begin - 1ms);
  const char* dir = std::getenv("SPILLWAY_TEST_ARTIFACTS");
  Process browser({"/usr/bin/node", script},
                  {{"SPILLWAY_URL", "http://127.0.0.1:" + std::to_string(server_->port())},
                   {"SPILLWAY_MEMBER_KEY", member_},
                   {"SPILLWAY_FINANCE_KEY", finance_},
                   {"SPILLWAY_OPERATOR_KEY", fleet_->operator_key},
                   {"SPILLWAY_CLOSE_PERIOD", last.Label()},
                   {"SPILLWAY_OFFER", "h100.1x in eu-north"},
                   {"SPILLWAY_REGION", "eu-north"},
                   {"SPILLWAY_ARTIFACTS", std::string(dir ? dir : "/tmp") + "/console"}});
  const int rc = browser.Wait(std::chrono::seconds(420));
  const std::string out = browser.Stderr();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("all passed"), std::string::npos) << out;
  // What the browser did is what the API holds: last month closed, the launched instance running.
  EXPECT_EQ(One("SELECT count(*) FROM billing_periods_closed WHERE period = $1", last.Label()), "1");
  EXPECT_EQ(One("SELECT state FROM instances WHERE name = 'from-the-console'"), "running");
  EXPECT_EQ(One("SELECT count(*) || ' ' || min(reason) FROM credit_notes"), "1 goodwill");
}
