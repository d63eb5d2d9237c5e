// spillway-billing-bench: the leader's billing steps against the database of bench/billing/run.
//   --draft: billing_drafts until no tenant-month is marked (every draft of the month from scratch);
//            prints "drafted N seconds S".
//   --close MONTH: closes the month (every invoice finalized, numbered, hashed); "finalized N seconds S".
//   --loop SECONDS [--every S]: marks every tenant of MONTH again and drafts, every S seconds (0: back
//            to back), for that long (the billing load beside bench/ingest); prints "round N" after each.
//   --pass N [--at ISO]: N of the leader's billing passes at ISO (default: the month's last hour) as
//            the fold leaves them when every tenant's usage moved: every tenant of MONTH marked, its
//            draft refreshed, then every prepaid balance and spend limit evaluated; prints
//            "pass I drafts S funds S pg_cpu S" for each (pg_cpu: its PostgreSQL backend's CPU).
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "billing/funds.hpp"
#include "billing/invoices.hpp"
#include "core/db.hpp"

using namespace spillway;
using Steady = std::chrono::steady_clock;

int main(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  if (!a.count("--dsn") || !a.count("--month")) {
    std::cerr << "usage: spillway-billing-bench --dsn DSN --month YYYY-MM (--draft 1 | --close 1 | --loop SECONDS)\n";
    return 2;
  }
  const auto month = ParseMonth(a["--month"]);
  if (!month) return 2;
  auto conn = OpenSession({a["--dsn"], "spillway-billing-bench", std::chrono::milliseconds(3000), std::chrono::milliseconds(0)});
  billing::BillingSettings settings;
  settings.issuer = {"Bench Cloud", "", "", ""};
  const TimeMs now = month->end + std::chrono::hours(1);
  if (a.count("--draft")) {
    const auto start = Steady::now();
    int total = 0;
    for (;;) {
      int drafted = 0;
      billing::DraftInvoices(*conn, month->end - std::chrono::hours(1), settings, &drafted);
      if (drafted == 0) break;
      total += drafted;
    }
    std::cout << "drafted " << total << " seconds " << std::chrono::duration<double>(Steady::now() - start).count() << "\n";
  } else if (a.count("--close")) {
    const auto start = Steady::now();
    const auto c = InTransaction(*conn, [&](Tx& tx) { return billing::ClosePeriod(tx, *month, now, settings, "bench"); });
    std::cout << "finalized " << c.invoices << " seconds " << std::chrono::duration<double>(Steady::now() - start).count()
              << "\n";
  } else if (a.count("--pass")) {
    const TimeMs at = a.count("--at") ? *ParseTime(a["--at"]) : month->end - std::chrono::hours(1);
    const std::string backend = "/proc/" + pqxx::nontransaction(*conn).exec1("SELECT pg_backend_pid()")[0].as<std::string>() + "/stat";
    const auto backend_cpu = [&] {  // utime + stime of the backend, in seconds
      std::ifstream in(backend);
      std::string field;
      double ticks = 0;
      for (int i = 1; i <= 15 && in >> field; ++i)
        if (i == 14 || i == 15) ticks += std::stod(field);
      return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
    };
    for (int pass = 1; pass <= std::stoi(a["--pass"]); ++pass) {
      const double cpu0 = backend_cpu();
      const auto start = Steady::now();
      {
        pqxx::work tx(*conn);
        tx.exec_params("INSERT INTO billing_dirty (tenant_id, period, marked_at) SELECT id, $1, now() FROM tenants "
                       "WHERE name LIKE 'bench-%' ON CONFLICT DO NOTHING",
                       a["--month"]);
        tx.commit();
      }
      for (;;) {  // until no tenant-month is marked (a batch at a time)
        int drafted = 0;
        billing::DraftInvoices(*conn, at, settings, &drafted);
        if (drafted == 0) break;
      }
      const auto drafts_done = Steady::now();
      const auto verdicts =
          InTransaction(*conn, [&](Tx& tx) { return billing::EvaluateFunds(tx, at, billing::FundsSettings{}); });
      const auto end = Steady::now();
      std::cout << "pass " << pass << " drafts " << std::chrono::duration<double>(drafts_done - start).count()
                << " funds " << std::chrono::duration<double>(end - drafts_done).count() << " pg_cpu "
                << backend_cpu() - cpu0 << " verdicts " << verdicts.size() << std::endl;
    }
  } else if (a.count("--loop")) {
    const auto until = Steady::now() + std::chrono::seconds(std::stoi(a["--loop"]));
    const auto every = std::chrono::seconds(a.count("--every") ? std::stoi(a["--every"]) : 0);
    int rounds = 0;
    for (auto next = Steady::now(); Steady::now() < until; next += every) {
      std::this_thread::sleep_until(next);
      {
        pqxx::work tx(*conn);
        tx.exec_params("INSERT INTO billing_dirty (tenant_id, period, marked_at) SELECT id, $1, now() FROM tenants "
                       "WHERE name LIKE 'bench-%' ON CONFLICT DO NOTHING",
                       a["--month"]);
        tx.commit();
      }
      billing::DraftInvoices(*conn, SystemClockInstance().Now(), settings);
      std::cout << "round " << ++rounds << std::endl;
    }
    std::cout << "rounds " << rounds << "\n";  // the last line, unless it was stopped first
  }
  return 0;
}
