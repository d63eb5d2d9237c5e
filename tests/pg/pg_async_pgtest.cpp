// The io threads' libpq pipeline (core/pg_async) against a real PostgreSQL: a batch too large for the
// socket buffers, and reads of every size over TLS.
#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <string>
#include <vector>

#include "core/pg_async.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace std::chrono_literals;

namespace {
const Statement kEcho{"pg_async_test_echo", "SELECT $1::text AS v"};
const Statement kRepeat{"pg_async_test_repeat", "SELECT repeat('x', $1::int) AS v"};

// Takes answers, as the io thread does (Next first, then wait on the socket and Consume), until
// `syncs` batches have ended. False when the socket stays silent for `stall` while answers are
// still due, or the connection breaks.
bool Collect(PgAsyncConnection& c, int syncs, std::vector<PgResult>* out, std::chrono::milliseconds stall) {
  while (syncs > 0) {
    std::optional<PgResult> r;
    switch (c.Next(&r)) {
      case PgAsyncConnection::Event::kResult:
        out->push_back(std::move(*r));
        break;
      case PgAsyncConnection::Event::kEndOfStatement:
        break;
      case PgAsyncConnection::Event::kSync:
        --syncs;
        break;
      case PgAsyncConnection::Event::kNothingYet: {
        pollfd p{c.socket(), POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(stall.count())) <= 0) return false;
        if (!c.Consume()) return false;
      }
    }
  }
  return true;
}
}  // namespace

TEST(PgAsync, ABatchLargerThanTheSocketBuffersIsSentWhileItsAnswersAreTakenIn) {
  test::TestDb db(false);
  auto c = PgAsyncConnection::Open({db.dsn(), "pg-async-test", Millis(3000), Millis(20000)}, {&kEcho});
  ASSERT_TRUE(c->EnterPipeline());
  // 4,000 statements of 2 kB, answered by 2 kB each: 8 MB each way, far beyond what the socket
  // buffers hold, so PostgreSQL stops reading until we read what it answered.
  const std::string payload(2000, 'p');
  const int n = 4000;
  for (int i = 0; i < n; ++i) ASSERT_TRUE(c->Queue(kEcho, {payload + std::to_string(i)}));
  ASSERT_TRUE(c->Sync());
  // Sync had to take answers in to get the batch out: they are in libpq's buffer now, where a wait
  // on the socket would not see them. That is why the io thread asks Next before it waits.
  std::optional<PgResult> first;
  ASSERT_EQ(c->Next(&first), PgAsyncConnection::Event::kResult);
  ASSERT_TRUE(first && first->ok());
  EXPECT_EQ((*first)[0]["v"].as<std::string>(), payload + "0");
  std::vector<PgResult> results;
  results.push_back(std::move(*first));
  ASSERT_TRUE(Collect(*c, 1, &results, 10s));
  ASSERT_EQ(results.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; i += 397) {
    ASSERT_TRUE(results[i].ok()) << i;
    EXPECT_EQ(results[i][0]["v"].as<std::string>(), payload + std::to_string(i));
  }
  // The connection goes on as before.
  ASSERT_TRUE(c->Queue(kEcho, {"after"}));
  ASSERT_TRUE(c->Sync());
  results.clear();
  ASSERT_TRUE(Collect(*c, 1, &results, 10s));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0][0]["v"].as<std::string>(), "after");
}

TEST(PgAsync, ReadsOverTlsComeBackWholeWhateverTheirSize) {
  test::OwnCluster cluster(/*tls=*/true);
  ASSERT_TRUE(cluster.ok());
  auto c = PgAsyncConnection::Open({cluster.tls_dsn(), "pg-async-test", Millis(3000), Millis(20000)}, {&kRepeat});
  ASSERT_TRUE(c->encrypted());
  ASSERT_TRUE(c->EnterPipeline());
  // Answers that end inside a TLS record, span several, or fill libpq's buffer; batches of each.
  const std::vector<int> sizes = {1, 100, 7000, 8200, 9000, 16000, 16400, 17000, 20000, 33000, 70000, 1 << 20, 5};
  for (int round = 0; round < 12; ++round) {
    std::vector<int> batch;
    for (size_t k = 0; k <= static_cast<size_t>(round % 4); ++k) batch.push_back(sizes[(round * 5 + k * 3) % sizes.size()]);
    for (int size : batch) ASSERT_TRUE(c->Queue(kRepeat, {std::to_string(size)}));
    ASSERT_TRUE(c->Sync());
    std::vector<PgResult> results;
    ASSERT_TRUE(Collect(*c, 1, &results, 10s)) << "round " << round << ": answers due but the socket stayed silent";
    ASSERT_EQ(results.size(), batch.size());
    for (size_t k = 0; k < batch.size(); ++k) {
      ASSERT_TRUE(results[k].ok());
      EXPECT_EQ(results[k][0]["v"].as<std::string>().size(), static_cast<size_t>(batch[k])) << "round " << round;
    }
  }
}
