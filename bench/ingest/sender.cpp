// spillway-ingest-bench: registers --hosts simulated hosts and sends --batches sample batches of
// --batch-samples each per host, one sender thread per host (so --hosts concurrent senders),
// through POST /v1/agent/samples. Prints samples/s overall and per tenth of the run; with
// --copy-file also writes the same rows in COPY text form (the psql \copy baseline).
#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "agent/http_client.hpp"
#include "protocol/agent.hpp"

using namespace spillway;
using Steady = std::chrono::steady_clock;

int main(int argc, char** argv) {
  std::map<std::string, std::string> a = {{"--hosts", "8"}, {"--batches", "50"}, {"--batch-samples", "1000"},
                                          {"--gpus", "8"}, {"--copy-file", ""}, {"--name", "bench"}};
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  if (!a.count("--api") || !a.count("--bootstrap-token")) {
    std::cerr << "usage: spillway-ingest-bench --api URL --bootstrap-token T [--hosts 8] [--batches 50]\n"
                 "       [--batch-samples 1000] [--gpus 8] [--copy-file F] [--name PREFIX]\n";
    return 2;
  }
  const int hosts = std::stoi(a["--hosts"]), batches = std::stoi(a["--batches"]);
  const int per_batch = std::stoi(a["--batch-samples"]), gpus = std::stoi(a["--gpus"]);
  struct Host {
    std::string id, token;
  };
  std::vector<Host> registered;
  for (int h = 0; h < hosts; ++h) {
    protocol::Registration reg{a["--name"] + "-" + std::to_string(h), "bench", "bench-1a", {}};
    for (int g = 0; g < gpus; ++g)
      reg.gpus.push_back({g, 80LL << 30, "GPU-" + reg.hostname + "-" + std::to_string(g), "H100-80GB"});
    agent::HttpClient client(a["--api"]);
    const auto r = client.Call("POST", "/v1/agent/register", a["--bootstrap-token"],
                               boost::json::serialize(protocol::ToJson(reg)), std::chrono::seconds(10));
    if (r.status != 200 && r.status != 201) {
      std::cerr << "registration: " << r.status << " " << r.body << "\n";
      return 1;
    }
    const auto j = protocol::ParseRegistered(boost::json::parse(r.body));
    registered.push_back({j.host_id, j.host_token});
  }
  // Each host's samples: per GPU consecutive 10 ms intervals, ending a little before now.
  const std::int64_t per_host = static_cast<std::int64_t>(batches) * per_batch;
  const std::int64_t start_ms = EpochMs(NowMs()) - (per_host / gpus + 10) * 10 - 60'000;
  auto sample_of = [&](std::int64_t n) {  // the n-th sample of a host
    protocol::Sample s;
    s.gpu_index = static_cast<int>(n % gpus);
    s.ts_ms = FromEpochMs(start_ms + (n / gpus + 1) * 10);
    s.interval_ms = 10;
    s.util_pct = static_cast<int>(n % 101);
    s.mem_used_bytes = 1LL << 30;
    s.power_mw = 650'000;
    s.energy_mj = 6'500;
    return s;
  };
  if (!a["--copy-file"].empty()) {
    std::ofstream out(a["--copy-file"]);
    for (const auto& h : registered)
      for (std::int64_t n = 0; n < per_host; ++n) {
        const auto s = sample_of(n);
        out << FormatTime(s.ts_ms) << '\t' << h.id << '\t' << s.gpu_index << "\t\\N\t" << s.interval_ms << '\t'
            << s.util_pct << '\t' << s.mem_used_bytes << '\t' << s.power_mw << '\t' << s.energy_mj << '\n';
      }
    std::cout << "copy_file_rows " << per_host * hosts << "\n";
    return 0;
  }
  std::vector<std::int64_t> done_at_ms(static_cast<std::size_t>(batches) * hosts);  // per committed batch
  std::atomic<std::size_t> committed{0};
  std::atomic<int> failures{0};
  const auto t0 = Steady::now();
  std::vector<std::thread> senders;
  for (int h = 0; h < hosts; ++h)
    senders.emplace_back([&, h] {
      agent::HttpClient client(a["--api"]);
      for (int b = 0; b < batches; ++b) {
        protocol::SampleBatch batch;
        batch.batch_seq = b;
        for (int i = 0; i < per_batch; ++i) batch.samples.push_back(sample_of(static_cast<std::int64_t>(b) * per_batch + i));
        batch.sampled_through_ms = batch.samples.back().ts_ms;
        const std::string body = boost::json::serialize(protocol::ToJson(batch));
        for (;;) {
          const auto r = client.Call("POST", "/v1/agent/samples", registered[h].token, body, std::chrono::seconds(60));
          if (r.status == 200) break;
          if (r.status != 503) {
            std::cerr << "batch refused: " << r.status << " " << r.body << "\n";
            ++failures;
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        done_at_ms[committed++] =
            std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now() - t0).count();
      }
    });
  for (auto& t : senders) t.join();
  const double seconds = std::chrono::duration<double>(Steady::now() - t0).count();
  if (failures) return 1;
  const double total = static_cast<double>(per_host) * hosts;
  std::printf("samples %.0f seconds %.3f samples_per_s %.0f\n", total, seconds, total / seconds);
  // Rate per tenth of the batches, in commit order: does it hold as the table grows?
  std::sort(done_at_ms.begin(), done_at_ms.end());
  const std::size_t tenth = done_at_ms.size() / 10;
  if (tenth > 0) {
    auto rate = [&](std::size_t from, std::size_t to) {
      const double ms = static_cast<double>(done_at_ms[to - 1] - (from ? done_at_ms[from - 1] : 0));
      return static_cast<double>((to - from) * per_batch) / (ms > 0 ? ms / 1000 : 1e-3);
    };
    std::printf("first_tenth_per_s %.0f last_tenth_per_s %.0f\n", rate(0, tenth),
                rate(done_at_ms.size() - tenth, done_at_ms.size()));
  }
  return 0;
}
