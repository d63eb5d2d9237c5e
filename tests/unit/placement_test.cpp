// The placement rules on synthetic pools: best fit on one host, spot only into spare GPUs,
// on-demand preempting spot (cheapest bid first, then newest) and keeping the internal reservation.
#include <gtest/gtest.h>

#include "provisioning/fleet.hpp"
#include "core/errors.hpp"

using namespace spillway;

namespace {
HostSlot Host(const std::string& id, int count, std::vector<int> free, bool placeable = true) {
  HostSlot h;
  h.id = id;
  h.gpu_count = count;
  h.free = std::move(free);
  h.placeable = placeable;
  return h;
}
int Status(const std::function<void()>& f) {
  try {
    f();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.code, "insufficient_capacity");
    return e.status;
  }
  return 0;
}
}  // namespace

TEST(Placement, BestFitOnOneHost) {
  PoolState p;
  p.total = 16;
  p.hosts = {Host("a", 8, {0, 1, 2, 3, 4, 5, 6, 7}), Host("b", 8, {5, 6, 7})};
  p.on_demand = 5;
  auto plan = PlanPlacement(p, 2, Market::kOnDemand);
  EXPECT_EQ(plan.state, InstanceState::kProvisioning);
  EXPECT_EQ(plan.host_id, "b");  // the tightest host that fits
  EXPECT_EQ(plan.gpu_indices, (std::vector<int>{5, 6}));
  plan = PlanPlacement(p, 4, Market::kOnDemand);
  EXPECT_EQ(plan.host_id, "a");
  EXPECT_TRUE(plan.victims.empty());
}

TEST(Placement, NeverSplitsAnInstanceAcrossHosts) {
  PoolState p;
  p.total = 16;
  p.hosts = {Host("a", 8, {0, 1, 2, 3}), Host("b", 8, {4, 5, 6, 7})};
  p.on_demand = 8;
  EXPECT_EQ(Status([&] { PlanPlacement(p, 8, Market::kOnDemand); }), 409);
  EXPECT_EQ(Status([&] { PlanPlacement(p, 8, Market::kSpot); }), 409);
}

TEST(Placement, SpotUsesOnlySpareAndSkipsUnplaceableHosts) {
  PoolState p;
  p.total = 16;
  p.reserved = 8;
  p.on_demand = 4;
  p.hosts = {Host("a", 8, {4, 5, 6, 7}), Host("b", 8, {0, 1, 2, 3, 4, 5, 6, 7}, /*placeable=*/false)};
  EXPECT_EQ(p.Spare(), 4);
  EXPECT_EQ(PlanPlacement(p, 4, Market::kSpot).host_id, "a");
  EXPECT_EQ(Status([&] { PlanPlacement(p, 5, Market::kSpot); }), 409);  // 8 are reserved for internal work
  p.hosts[0].claimed = 1;  // promised to a pending on-demand instance
  EXPECT_EQ(Status([&] { PlanPlacement(p, 4, Market::kSpot); }), 409);
}

TEST(Placement, OnDemandPreemptsTheCheapestThenNewestSpotOnOneHost) {
  PoolState p;
  p.total = 8;
  p.hosts = {Host("a", 8, {})};
  p.spot_active = 8;
  // LoadPool's order: cheapest bid first (no max price = pays up to on-demand, last), then newest.
  p.spot = {{"cheap", "a", 4, 1'000'000}, {"dear-new", "a", 2, 2'000'000}, {"dear-old", "a", 2, 2'000'000},
            {"nomax", "a", 0, std::nullopt}};
  auto plan = PlanPlacement(p, 6, Market::kOnDemand);
  EXPECT_EQ(plan.state, InstanceState::kPending);
  EXPECT_EQ(plan.host_id, "a");
  ASSERT_EQ(plan.victims.size(), 2u);
  EXPECT_EQ(plan.victims[0].id, "cheap");
  EXPECT_EQ(plan.victims[1].id, "dear-new");
}

TEST(Placement, OnDemandKeepsTheInternalReservation) {
  PoolState p;
  p.total = 16;
  p.reserved = 8;
  p.hosts = {Host("a", 8, {0, 1, 2, 3, 4, 5, 6, 7}), Host("b", 8, {})};
  p.spot_active = 8;
  p.spot = {{"s1", "b", 4, 1'000'000}, {"s2", "b", 4, 1'500'000}};
  // Free GPUs exist on a, but they are the internal reservation's: spot must make way instead.
  auto plan = PlanPlacement(p, 4, Market::kOnDemand);
  EXPECT_EQ(plan.state, InstanceState::kProvisioning);
  EXPECT_EQ(plan.host_id, "a");
  ASSERT_EQ(plan.victims.size(), 1u);
  EXPECT_EQ(plan.victims[0].id, "s1");
  p.on_demand = 8;
  EXPECT_EQ(Status([&] { PlanPlacement(p, 1, Market::kOnDemand); }), 409);  // total − reserved is taken
}

TEST(Placement, GpusUnderNoticeCountAsComingFree) {
  PoolState p;
  p.total = 8;
  p.hosts = {Host("a", 8, {})};
  p.hosts[0].leaving = 6;  // six GPUs' spot instances are already leaving
  p.spot_leaving = 6;
  p.spot_active = 2;
  p.spot = {{"s", "a", 2, std::nullopt}};
  auto plan = PlanPlacement(p, 6, Market::kOnDemand);
  EXPECT_EQ(plan.state, InstanceState::kPending);
  EXPECT_TRUE(plan.victims.empty());  // nothing more needs preempting
  plan = PlanPlacement(p, 8, Market::kOnDemand);
  ASSERT_EQ(plan.victims.size(), 1u);
  EXPECT_EQ(plan.victims[0].id, "s");
}
