// How long the agent's shipper waits after a failed batch (agent/host_agent, ShipBackoff): it
// doubles from 500 ms, but never past an eighth of the time since a batch last went through, nor
// 30 s, so a host whose network comes back after a cut of a minute resumes within seconds.
#include <gtest/gtest.h>

#include "agent/host_agent.hpp"

using spillway::agent::ShipBackoff;
using namespace std::chrono_literals;
using std::chrono::milliseconds;

TEST(ShipBackoff, DoublesFromHalfASecond) {
  EXPECT_EQ(ShipBackoff(0ms, 1h), 500ms);
  EXPECT_EQ(ShipBackoff(500ms, 1h), 1000ms);
  EXPECT_EQ(ShipBackoff(4000ms, 1h), 8000ms);
}

TEST(ShipBackoff, IsCappedByAnEighthOfTheTimeSinceTheLastBatchWentThrough) {
  // A cut of 70 s: retried at most 8.75 s apart, however many failures came before.
  milliseconds wait = 0ms;
  for (int i = 0; i < 20; ++i) wait = ShipBackoff(wait, 70s);
  EXPECT_EQ(wait, 8750ms);
  // Just after a success: half a second.
  EXPECT_EQ(ShipBackoff(16000ms, 1s), 500ms);
}

TEST(ShipBackoff, NeverPastThirtySeconds) {
  milliseconds wait = 0ms;
  for (int i = 0; i < 20; ++i) wait = ShipBackoff(wait, 24h);
  EXPECT_EQ(wait, 30s);
}
