// POST /v1/agent/samples spoken directly (docs/protocol.md): a batch is stored exactly once, a
// replay is acknowledged without a second write, an invalid sample refuses its whole batch (and
// never blocks the next), and concurrent batches from many hosts are each stored once.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "core/clock.hpp"
#include "tests/e2e/fleet_support.hpp"

using namespace spillway;
using namespace spillway::test;
using namespace std::chrono_literals;

namespace {
const std::string kBootstrap = "test-bootstrap-token";

std::string HostBody(const std::string& hostname) {
  std::string gpus;
  for (int i = 0; i < 2; ++i)
    gpus += std::string(i ? "," : "") + R"({"index":)" + std::to_string(i) + R"(,"uuid":"GPU-)" + hostname + "-" +
            std::to_string(i) + R"(","model":"H100-80GB","memory_bytes":85899345920})";
  return R"({"hostname":")" + hostname + R"(","region":"eu-north","zone":"eu-north-1a","gpus":[)" + gpus + "]}";
}

struct S {
  std::int64_t ts_ms;
  int gpu;
  std::string instance;  // "" for none
  std::int64_t interval_ms = 1000;
};

std::string Batch(std::int64_t seq, const std::vector<S>& samples, std::int64_t through_ms = 0) {
  std::string body = R"({"batch_seq":)" + std::to_string(seq) + R"(,"sampled_through_ms":)";
  std::int64_t through = through_ms;
  for (const auto& s : samples) through = std::max(through, s.ts_ms);
  body += std::to_string(through) + R"(,"sent_at_ms":)" + std::to_string(EpochMs(NowMs())) + R"(,"samples":[)";
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& s = samples[i];
    body += std::string(i ? "," : "") + R"({"ts_ms":)" + std::to_string(s.ts_ms) + R"(,"gpu_index":)" +
            std::to_string(s.gpu) + R"(,"instance_id":)" + (s.instance.empty() ? "null" : "\"" + s.instance + "\"") +
            R"(,"interval_ms":)" + std::to_string(s.interval_ms) +
            R"(,"util_pct":97,"mem_used_bytes":1839071232,"power_mw":688458,"energy_mj":5087279})";
  }
  return body + "]}";
}
}  // namespace

class Ingest : public FleetTest {
 protected:
  void SetUp() override { StartFleet(8); }
  HttpResponse Call(const std::string& method, const std::string& path, const std::string& key,
                    const std::string& body = "") {
    return fleet_->Call(method, path, key, body);
  }
  struct Host {
    std::string id, token;
  };
  Host Register(const std::string& hostname) {
    const auto r = Call("POST", "/v1/agent/register", kBootstrap, HostBody(hostname));
    EXPECT_TRUE(r.status == 201 || r.status == 200) << r.body;
    const auto j = Json(r);
    return {Str(j, "host_id"), Str(j, "host_token")};
  }
  // An on-demand instance placed on `host` and reported running; returns {id, its GPU}.
  std::pair<std::string, int> RunningInstance(const Host& host) {
    const auto created = Call("POST", "/v1/instances", member_,
                              R"({"instance_type":"h100.1x","region":"eu-north","market":"on_demand"})");
    EXPECT_EQ(created.status, 201) << created.body;
    const auto j = Json(created);
    const std::string id = Str(j, "id");
    EXPECT_EQ(Str(j, "host_id"), host.id);
    EXPECT_EQ(Call("POST", "/v1/agent/heartbeat", host.token,
                   R"({"instances":[{"id":")" + id + R"(","state":"running"}]})").status, 200);
    return {id, static_cast<int>(j.at("gpu_indices").as_array().at(0).as_int64())};
  }
  // When `instance` was given its GPU (the database's clock, as its hold is recorded), in ms; and
  // when it let it go (0 while held).
  std::pair<std::int64_t, std::int64_t> Hold(const std::string& instance) {
    return {Scalar("SELECT (extract(epoch FROM allocated_at) * 1000)::bigint FROM gpu_allocation_history "
                   "WHERE instance_id = $1", instance),
            Scalar("SELECT coalesce((extract(epoch FROM released_at) * 1000)::bigint, 0) FROM gpu_allocation_history "
                   "WHERE instance_id = $1", instance)};
  }
  // Waits until the clock has passed `ms` (and is not within a second of the turn of an hour,
  // where stored samples are cut in two).
  static void SleepPast(std::int64_t ms) {
    for (;;) {
      const std::int64_t now = EpochMs(NowMs());
      if (now > ms && now % 3'600'000 > 5'000) return;
      std::this_thread::sleep_for(50ms);
    }
  }
  // One value of a query; `args` are its $1, $2, … parameters.
  template <class... Args>
  std::int64_t Scalar(const std::string& sql, const Args&... args) {
    auto c = db_->Connect();
    pqxx::nontransaction tx(*c);
    return tx.exec_params(sql, args...).at(0).at(0).template as<std::int64_t>();
  }
};

TEST_F(Ingest, ABatchIsStoredOnceAndAReplayIsADuplicate) {
  const Host host = Register("gpu-1");
  const auto [instance, gpu] = RunningInstance(host);
  // Two seconds of the instance's hold, once they have passed.
  const std::int64_t now = Hold(instance).first + 2000;
  SleepPast(now);
  const std::string batch = Batch(0, {{now - 1000, gpu, instance}, {now - 1000, 1 - gpu, ""}, {now, gpu, instance}});
  auto r = Call("POST", "/v1/agent/samples", host.token, batch);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("accepted").as_int64(), 3);
  EXPECT_FALSE(Json(r).at("duplicate").as_bool());
  // The answer was lost, say: the agent sends the batch again. Acknowledged, nothing written.
  r = Call("POST", "/v1/agent/samples", host.token, batch);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("accepted").as_int64(), 0);
  EXPECT_TRUE(Json(r).at("duplicate").as_bool());
  EXPECT_EQ(Scalar("SELECT count(*) FROM usage_samples"), 3);
  EXPECT_EQ(Scalar("SELECT sum(interval_ms) FROM usage_samples WHERE instance_id = $1", instance), 2000);
  EXPECT_EQ(Scalar("SELECT count(*) FROM usage_samples WHERE instance_id IS NULL"), 1);
  EXPECT_EQ(Scalar("SELECT count(*) FROM ingest_batches"), 1);
  EXPECT_EQ(Scalar("SELECT (extract(epoch FROM sampled_through) * 1000)::bigint FROM host_watermarks"), now);
  // An agent that lost its spool registers again and is told where to go on numbering.
  r = Call("POST", "/v1/agent/register", kBootstrap, HostBody("gpu-1"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("next_batch_seq").as_int64(), 1);
  // The skew gauge shows the host's clock against the server's.
  const auto metrics = Http(server_->admin_port(), "GET", "/metrics");
  EXPECT_NE(metrics.body.find("spillway_host_clock_skew_seconds{host_id=\"" + host.id + "\"}"), std::string::npos);
  EXPECT_NE(metrics.body.find("spillway_ingest_batches_total{result=\"duplicate\"} 1"), std::string::npos);
  EXPECT_NE(metrics.body.find("spillway_ingest_samples_total 3"), std::string::npos);
}

TEST_F(Ingest, AnInvalidSampleRefusesItsWholeBatchAndNeverBlocksTheNext) {
  const Host host = Register("gpu-1");
  const auto [instance, gpu] = RunningInstance(host);
  const std::int64_t now = EpochMs(NowMs());
  struct Case {
    std::vector<S> samples;
    std::size_t index;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{{now, gpu, instance}, {now, 1 - gpu, instance}}, 1, "did not hold GPU"},  // not its GPU
      {{{now, gpu, instance}, {now, 7, ""}}, 1, "no GPU 7"},
      {{{now + 60'000, gpu, instance}}, 0, "ahead of the server's clock"},
      {{{now, gpu, instance, 31'000}}, 0, "more than 3 sample intervals"},
      {{{now - 500, gpu, instance}, {now, gpu, instance}}, 1, "overlaps samples[0]"},
      {{{now - 3'600'000, gpu, instance}}, 0, "did not hold GPU"},  // before it was placed
      {{{now, gpu, "ins_someone_elses"}}, 0, "did not hold GPU"},
  };
  for (const auto& c : cases) {
    const auto r = Call("POST", "/v1/agent/samples", host.token, Batch(5, c.samples));
    ASSERT_EQ(r.status, 422) << r.body;
    const auto body = Json(r);
    const auto& err = body.at("error");
    EXPECT_EQ(Str(err, "code"), "invalid_sample") << r.body;
    EXPECT_EQ(err.at("sample_index").as_int64(), static_cast<std::int64_t>(c.index)) << r.body;
    EXPECT_NE(Str(err, "message").find(c.says), std::string::npos) << r.body;
  }
  // A malformed sample is refused with its index too, before anything is looked up.
  auto r = Call("POST", "/v1/agent/samples", host.token,
                R"({"batch_seq":5,"sampled_through_ms":1,"samples":[{"ts_ms":1,"gpu_index":0,"instance_id":null,)"
                R"("interval_ms":1000,"util_pct":101,"mem_used_bytes":0,"power_mw":0,"energy_mj":0}]})");
  ASSERT_EQ(r.status, 422) << r.body;
  const auto malformed = Json(r);
  EXPECT_EQ(malformed.at("error").at("sample_index").as_int64(), 0);
  EXPECT_NE(Str(malformed.at("error"), "message").find("samples[0].util_pct"), std::string::npos) << r.body;
  EXPECT_EQ(Scalar("SELECT count(*) FROM usage_samples"), 0);
  EXPECT_EQ(Scalar("SELECT count(*) FROM ingest_batches"), 0);
  // The agent sets a refused batch aside; the next one (even with the same number) goes in.
  r = Call("POST", "/v1/agent/samples", host.token, Batch(5, {{now, gpu, instance}}));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json(r).at("accepted").as_int64(), 1);
  // Only hosts ship samples.
  EXPECT_EQ(Call("POST", "/v1/agent/samples", member_, Batch(6, {{now, gpu, ""}})).status, 403);
}

TEST_F(Ingest, EveryBatchSentThreeTimesConcurrentlyFromManyHostsIsStoredOnce) {
  constexpr int kHosts = 4, kBatches = 25, kPerBatch = 40;
  std::vector<Host> hosts;
  for (int h = 0; h < kHosts; ++h) hosts.push_back(Register("gpu-" + std::to_string(h)));
  const std::int64_t start = EpochMs(NowMs()) - kBatches * kPerBatch * 10;
  std::atomic<int> failures{0};
  std::vector<std::thread> senders;
  // Three senders per host send every batch (two replays racing the first).
  for (int h = 0; h < kHosts; ++h)
    for (int copy = 0; copy < 3; ++copy)
      senders.emplace_back([&, h] {
        for (int b = 0; b < kBatches; ++b) {
          std::vector<S> samples;
          for (int i = 0; i < kPerBatch; ++i)
            samples.push_back({start + (b * kPerBatch + i) * 10 + 10, i % 2, "", 10});
          const std::string body = Batch(b, samples);
          for (int attempt = 0;; ++attempt) {
            const auto r = Call("POST", "/v1/agent/samples", hosts[h].token, body);
            if (r.status == 200) break;
            if (r.status != 503 || attempt > 50) {
              ++failures;
              ADD_FAILURE() << r.status << " " << r.body;
              break;
            }
            std::this_thread::sleep_for(50ms);
          }
        }
      });
  for (auto& t : senders) t.join();
  ASSERT_EQ(failures, 0);
  EXPECT_EQ(Scalar("SELECT count(*) FROM usage_samples"), kHosts * kBatches * kPerBatch);
  EXPECT_EQ(Scalar("SELECT sum(interval_ms) FROM usage_samples"), kHosts * kBatches * kPerBatch * 10);
  EXPECT_EQ(Scalar("SELECT count(*) FROM ingest_batches"), kHosts * kBatches);
  EXPECT_EQ(Scalar("SELECT max(n) FROM (SELECT count(*) AS n FROM usage_samples GROUP BY host_id, gpu_index, ts) c"), 1);
}

TEST_F(Ingest, AnInstanceIsAttributedOnlyWhileItHeldItsGpuHoweverSamplesArrive) {
  const Host host = Register("gpu-1");
  const auto [instance, gpu] = RunningInstance(host);
  // Three seconds of running, the host heard meanwhile (silent as long as the heartbeat timeout, it
  // would be marked down and the instance failed rather than terminated).
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(500ms);
    ASSERT_EQ(Call("POST", "/v1/agent/heartbeat", host.token,
                   R"({"instances":[{"id":")" + instance + R"(","state":"running"}]})").status, 200);
  }
  ASSERT_EQ(Call("DELETE", "/v1/instances/" + instance, member_).status, 200);
  ASSERT_EQ(Call("POST", "/v1/agent/heartbeat", host.token,
                 R"({"instances":[{"id":")" + instance + R"(","state":"stopped"}]})").status, 200);
  ASSERT_TRUE(fleet_->WaitState(member_, instance, "terminated"));
  const auto [from, to] = Hold(instance);
  ASSERT_GT(to, from + 2700);
  SleepPast(to + 4000);
  // As a buggy or hostile host would send them, each batch on its own: all accepted (within the
  // clock-skew tolerance), none attributed past the hold's ends.
  const std::vector<std::vector<S>> batches = {
      {{to + 1, gpu, instance, 1000}},     // ends 1 ms after the release
      {{to + 2, gpu, instance, 1}},        // wholly after it
      {{to + 4000, gpu, instance, 2000}},  // 2,000 ms ending 4 s after
      {{from + 700, gpu, instance, 1000}}, // begins 300 ms before the hold
      {{from + 1700, gpu, instance, 1000}},
  };
  std::int64_t seq = 0, sent_ms = 0;
  for (const auto& b : batches) {
    const auto r = Call("POST", "/v1/agent/samples", host.token, Batch(seq++, b));
    ASSERT_EQ(r.status, 200) << r.body;
    for (const auto& s : b) sent_ms += s.interval_ms;
  }
  const std::int64_t attributed = Scalar("SELECT sum(interval_ms) FROM usage_samples WHERE instance_id = $1", instance);
  EXPECT_EQ(attributed, 999 + 700 + 1000);
  EXPECT_LE(attributed, to - from);
  EXPECT_EQ(Scalar("SELECT sum(interval_ms) FROM usage_samples"), sent_ms);  // the rest kept, without an owner
  const auto metrics = Http(server_->admin_port(), "GET", "/metrics").body;
  auto value = [&](const std::string& name) {
    const auto at = metrics.find("\n" + name + " ");
    return at == std::string::npos ? -1.0 : std::stod(metrics.substr(at + name.size() + 2));
  };
  EXPECT_NEAR(value("spillway_ingest_unattributed_named_gpu_seconds_total"), (sent_ms - attributed) / 1000.0, 1e-9)
      << metrics;
  EXPECT_EQ(value("spillway_metering_overattributed_gpu_seconds_total"), 0) << metrics;
}

TEST_F(Ingest, GpuTimeSentUnderFreshBatchNumbersIsStoredOnceEvenFromTwoConnectionsAtOnce) {
  const Host host = Register("gpu-1");
  std::int64_t start = EpochMs(NowMs()) - 120'000;
  start -= start % 1000;
  if ((start + 100'000) / 3'600'000 != start / 3'600'000) start -= 110'000;  // clear of an hour's turn
  // The same sample under batch_seq 0, 1 and 2: stored once, the others refused with its index.
  for (std::int64_t seq : {0, 1, 2}) {
    const auto r = Call("POST", "/v1/agent/samples", host.token, Batch(seq, {{start + 2000, 0, "", 2000}}));
    if (seq == 0) {
      ASSERT_EQ(r.status, 200) << r.body;
      continue;
    }
    ASSERT_EQ(r.status, 422) << r.body;
    EXPECT_EQ(Json(r).at("error").at("overlapping_sample_indexes"), boost::json::parse("[0]")) << r.body;
  }
  EXPECT_EQ(Scalar("SELECT sum(interval_ms) FROM usage_samples"), 2000);
  // Two senders at once, each round's samples overlapping the other's by half, under fresh numbers.
  constexpr int kRounds = 40;
  std::atomic<int> accepted{0}, refused{0}, failures{0};
  std::atomic<std::int64_t> next_seq{100};
  auto sender = [&](std::int64_t shift) {
    for (int round = 0; round < kRounds; ++round) {
      const std::int64_t ts = start + 10'000 + round * 2000 + 1000 + shift;
      const std::string body = Batch(next_seq++, {{ts, 1, "", 1000}, {ts, 0, "", 1000}});
      for (int attempt = 0;; ++attempt) {
        const auto r = Call("POST", "/v1/agent/samples", host.token, body);
        if (r.status == 200) ++accepted;
        else if (r.status == 422 && r.body.find("overlapping_sample_indexes") != std::string::npos) ++refused;
        else if (r.status == 503 && attempt < 50) {
          std::this_thread::sleep_for(50ms);
          continue;
        } else {
          ++failures;
          ADD_FAILURE() << r.status << " " << r.body;
        }
        break;
      }
    }
  };
  std::thread a(sender, 0), b(sender, 500);
  a.join();
  b.join();
  ASSERT_EQ(failures, 0);
  EXPECT_EQ(accepted + refused, 2 * kRounds);
  // Each round: both GPUs' second stored once, whichever sender came first.
  EXPECT_EQ(Scalar("SELECT sum(interval_ms) FROM usage_samples"), 2000 + accepted * 2000);
  EXPECT_EQ(accepted, kRounds);
  EXPECT_EQ(Scalar("SELECT count(*) FROM (SELECT ts - interval_ms * interval '1 millisecond' AS begins, "
                   "lag(ts) OVER (PARTITION BY host_id, gpu_index ORDER BY ts) AS prev_end FROM usage_samples) x "
                   "WHERE begins < prev_end"),
            0);
}
