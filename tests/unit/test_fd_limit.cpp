// raise_fd_limit, on this test's own process (ctest runs each test in a process of its own).
#include "pdlb/fd_limit.hpp"

#include <gtest/gtest.h>

#include <sys/resource.h>

TEST(FdLimit, ALoweredSoftLimitIsRaisedToTheHardOneAndSaidSo) {
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_max < 128) GTEST_SKIP() << "hard limit " << lim.rlim_max << " leaves nothing to raise";
  const rlimit lowered{64, lim.rlim_max};
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
  const auto change = pdlb::raise_fd_limit();
  EXPECT_FALSE(change.failed);
  EXPECT_EQ(change.before, 64u);
  EXPECT_EQ(change.after, lim.rlim_max);
  rlimit now{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &now), 0);
  EXPECT_EQ(now.rlim_cur, lim.rlim_max);
  // Already at the hard limit: nothing to do, and it says so.
  const auto again = pdlb::raise_fd_limit();
  EXPECT_EQ(again.before, again.after);
  EXPECT_FALSE(again.failed);
}
