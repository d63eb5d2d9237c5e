// State that lives as long as a host or a descriptor is known comes from LongLivedMemory, apart
// from the heap that connections churn through (core/long_lived.hpp; docs/fleet-scale.md, "Memory").
// Each test holds one of its users to that, and to what it must still do.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <gtest/gtest.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <memory>
#include <vector>

#include "apiserver/auth/key_cache.hpp"
#include "core/clock.hpp"
#include "core/long_lived.hpp"
#include "core/metrics.hpp"
#include "provisioning/heartbeats.hpp"

using namespace spillway;
using namespace std::chrono_literals;

namespace {
std::string HostId(int i) { return "hst_" + std::string(26, 'a') + std::to_string(i); }  // as long as a real id
}  // namespace

TEST(LongLivedMemory, TheReactorsDescriptorRecordsComeFromIt) {
  using State = boost::asio::detail::epoll_reactor::descriptor_state;
  const size_t before = LongLivedMemoryInUse();
  {
    boost::asio::io_context io;
    std::vector<boost::asio::ip::tcp::socket> sockets;
    for (int i = 0; i < 50; ++i) sockets.emplace_back(io).open(boost::asio::ip::tcp::v4());
    // If this fails after a Boost upgrade, the specialization in core/boost_src.cpp is no longer
    // the hook Asio makes these records with.
    EXPECT_GE(LongLivedMemoryInUse(), before + 50 * sizeof(State));
    const size_t open = LongLivedMemoryInUse();
    sockets.clear();
    for (int i = 0; i < 50; ++i) sockets.emplace_back(io).open(boost::asio::ip::tcp::v4());
    EXPECT_EQ(LongLivedMemoryInUse(), open) << "the reactor reuses a closed socket's record";
  }
  EXPECT_EQ(LongLivedMemoryInUse(), before) << "the reactor gave every record back when it was destroyed";
}

TEST(LongLivedMemory, TheKeyCacheKeepsItsEntriesThereAndGivesThemBack) {
  const size_t before = LongLivedMemoryInUse();
  {
    KeyCache cache(60s, 1000);
    cache.SetListening(true);
    for (int i = 0; i < 100; ++i)
      cache.Store(cache.Generation(), HostId(i), {std::string(64, 'f'), "ten_" + std::string(26, 'b'), "member", false});
    EXPECT_GE(LongLivedMemoryInUse(), before + 100 * (64 + 30));
    const auto found = cache.Find(HostId(7));
    ASSERT_TRUE(found);
    EXPECT_EQ(found->secret_hash, std::string(64, 'f'));
    EXPECT_EQ(found->tenant_id, "ten_" + std::string(26, 'b'));
    EXPECT_EQ(found->role, "member");
    cache.InvalidateTenant("ten_" + std::string(26, 'b'));
    EXPECT_EQ(cache.Size(), 0u);
  }
  EXPECT_EQ(LongLivedMemoryInUse(), before);
}

TEST(LongLivedMemory, ALabeledGaugeKeepsItsSeriesThereAndRendersEach) {
  const size_t before = LongLivedMemoryInUse();
  {
    LabeledGauge skew("spillway_test_skew_seconds", "test", "host_id");
    for (int i = 0; i < 100; ++i) skew.Set(HostId(i), i / 10.0);
    skew.Set(HostId(3), -2.5);
    EXPECT_EQ(skew.Size(), 100u);
    EXPECT_GT(LongLivedMemoryInUse(), before + 100 * 30);
    const prometheus::MetricFamily f = skew.Collect();
    EXPECT_EQ(f.name, "spillway_test_skew_seconds");
    ASSERT_EQ(f.metric.size(), 100u);
    bool seen = false;
    for (const auto& m : f.metric) {
      ASSERT_EQ(m.label.size(), 1u);
      EXPECT_EQ(m.label[0].name, "host_id");
      if (m.label[0].value == HostId(3)) seen = (m.gauge.value == -2.5);
    }
    EXPECT_TRUE(seen);
    skew.Remove(HostId(3));
    EXPECT_EQ(skew.Size(), 99u);
  }
  EXPECT_EQ(LongLivedMemoryInUse(), before);
}

TEST(LongLivedMemory, MetricsRenderALabeledGaugeWhileItLives) {
  Metrics metrics;
  auto skew = std::make_shared<LabeledGauge>("spillway_test_skew_seconds", "A test", "host_id");
  skew->Set("hst_a", 1.5);
  metrics.Add(skew);
  EXPECT_NE(metrics.Render().find("spillway_test_skew_seconds{host_id=\"hst_a\"} 1.5"), std::string::npos);
  EXPECT_NE(metrics.Render().find("spillway_long_lived_memory_bytes "), std::string::npos);
  skew.reset();
  EXPECT_EQ(metrics.Render().find("spillway_test_skew_seconds"), std::string::npos);
}

// The fast path keeps each host's last report encoded; it must still tell every different report apart.
TEST(LongLivedMemory, TheHeartbeatRecordersFastPathTellsReportsApart) {
  prometheus::Registry registry;
  const size_t before = LongLivedMemoryInUse();
  {
    HeartbeatRecorder recorder({"", "spillway-test", 3000ms, 30000ms}, 1000ms, SystemClockInstance(), registry);
    recorder.Invalidate({}, false, true);  // listening
    const auto report = [](std::vector<ReportedInstance> instances) { return HeartbeatReport{std::move(instances), "1.0"}; };
    const HeartbeatReport known = report({{"ab", "running"}, {"ins_c", "starting"}});
    recorder.Processed(recorder.Generation(), HostId(1), known, 7);
    EXPECT_GT(LongLivedMemoryInUse(), before);
    std::int64_t version = 0;
    EXPECT_TRUE(recorder.TryRecord(HostId(1), known, NowMs(), &version));
    EXPECT_EQ(version, 7);
    for (const auto& other : {report({{"ab", "running"}}), report({{"ab", "running"}, {"ins_c", "running"}}),
                              report({{"a", "brunning"}, {"ins_c", "starting"}}),
                              report({{"ab", "running"}, {"ins_c", "starting"}, {"ins_d", "running"}}), report({})})
      EXPECT_FALSE(recorder.TryRecord(HostId(1), other, NowMs(), &version));
    EXPECT_FALSE(recorder.TryRecord(HostId(2), known, NowMs(), &version)) << "another host";
    recorder.Invalidate({HostId(1)}, false, true);
    EXPECT_FALSE(recorder.TryRecord(HostId(1), known, NowMs(), &version)) << "its assignments changed";
  }
  EXPECT_EQ(LongLivedMemoryInUse(), before);
}
