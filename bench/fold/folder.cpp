// spillway-fold-bench: the leader's rollup fold against the database of bench/fold/run.
//   --pass 1: one pass of metering::FoldUsage (every tick not folded yet, the marked hours, the
//             price changes); prints "ticks N hours H wall S pg_cpu C", where pg_cpu is the CPU the
//             fold's PostgreSQL backend used (its /proc stat: the fold's PostgreSQL time).
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

#include <pqxx/pqxx>

#include "core/db.hpp"
#include "metering/fold.hpp"

using namespace spillway;
using Steady = std::chrono::steady_clock;

namespace {
// utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat).
double CpuSeconds(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream rest(stat.substr(stat.rfind(')') + 2));
  std::string field;
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoll(field);
    if (i == 15) stime = std::stoll(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}
}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  if (!a.count("--dsn") || !a.count("--pass")) {
    std::cerr << "usage: spillway-fold-bench --dsn DSN --pass 1\n";
    return 2;
  }
  auto conn = OpenSession({a["--dsn"], "spillway-fold-bench", std::chrono::milliseconds(3000), std::chrono::milliseconds(0)});
  const int pid = pqxx::nontransaction(*conn).exec1("SELECT pg_backend_pid()")[0].as<int>();
  const double cpu = CpuSeconds(pid);
  const auto start = Steady::now();
  metering::FoldLimits limits;
  limits.max_chunks = 1'000'000;  // the whole backlog in one pass
  const auto pass = metering::FoldUsage(*conn, limits);
  std::cout << "ticks " << pass.ticks << " hours " << pass.hours_refolded << " rerated " << pass.instance_hours_rerated
            << " wall " << std::chrono::duration<double>(Steady::now() - start).count() << " pg_cpu "
            << CpuSeconds(pid) - cpu << "\n";
  return 0;
}
