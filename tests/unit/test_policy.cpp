#include "pdlb/policy.hpp"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

namespace {

TEST(Policy, RoundRobinCyclesThroughEveryWorker) {
  std::atomic<std::size_t> rr{0};
  auto& rng = pdlb::thread_rng();
  std::vector<std::size_t> picks;
  for (int i = 0; i < 6; ++i)
    picks.push_back(pdlb::pick_worker(pdlb::policy_kind::round_robin, 3, [](std::size_t) { return 0; }, rng, rr));
  EXPECT_EQ(picks, (std::vector<std::size_t>{0, 1, 2, 0, 1, 2}));
}

TEST(Policy, RandomReachesEveryWorkerRoughlyEvenly) {
  std::atomic<std::size_t> rr{0};
  std::mt19937_64 rng(42);
  std::map<std::size_t, int> counts;
  for (int i = 0; i < 4000; ++i)
    counts[pdlb::pick_worker(pdlb::policy_kind::random, 4, [](std::size_t) { return 0; }, rng, rr)]++;
  ASSERT_EQ(counts.size(), 4u);
  for (auto& [k, v] : counts) {
    EXPECT_GT(v, 800) << k;
    EXPECT_LT(v, 1200) << k;
  }
}

TEST(Policy, Po2NeverPicksTheMostLoadedOfThree) {
  // With two distinct candidates out of three, the most loaded worker always loses.
  std::atomic<std::size_t> rr{0};
  std::mt19937_64 rng(7);
  std::vector<std::int64_t> load{5, 100, 7};
  std::set<std::size_t> picked;
  for (int i = 0; i < 1000; ++i)
    picked.insert(pdlb::pick_worker(pdlb::policy_kind::po2, 3, [&](std::size_t j) { return load[j]; }, rng, rr));
  EXPECT_EQ(picked.count(1), 0u);
  EXPECT_EQ(picked.count(0), 1u);
  EXPECT_EQ(picked.count(2), 1u);
}

TEST(Policy, Po2WithTwoWorkersAlwaysPicksTheLessLoaded) {
  std::atomic<std::size_t> rr{0};
  std::mt19937_64 rng(9);
  std::vector<std::int64_t> load{3, 1};
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(pdlb::pick_worker(pdlb::policy_kind::po2, 2, [&](std::size_t j) { return load[j]; }, rng, rr), 1u);
}

TEST(Policy, SingleWorkerIsAlwaysChosen) {
  std::atomic<std::size_t> rr{0};
  auto& rng = pdlb::thread_rng();
  for (auto p : {pdlb::policy_kind::random, pdlb::policy_kind::po2, pdlb::policy_kind::round_robin})
    EXPECT_EQ(pdlb::pick_worker(p, 1, [](std::size_t) { return 0; }, rng, rr), 0u);
}

TEST(Policy, RoomsAreWithinSignedInt64Range) {
  std::mt19937_64 rng(1);
  std::uint64_t max_seen = 0;
  for (int i = 0; i < 10000; ++i) {
    auto r = pdlb::random_room(rng);
    EXPECT_LE(r, (std::uint64_t{1} << 63) - 1);
    max_seen = std::max(max_seen, r);
  }
  EXPECT_GT(max_seen, std::uint64_t{1} << 62);  // the upper half of the range is reached
}

}  // namespace
