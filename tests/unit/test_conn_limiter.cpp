// The connector-limit semaphore: slots, waiters, deadlines and cancellation, on a real io_context
// (no sockets).
#include "pdlb/upstream.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include <chrono>
#include <optional>

namespace {

using namespace std::chrono_literals;
namespace net = boost::asio;
using clock_type = std::chrono::steady_clock;

TEST(ConnLimiter, TakesSlotsUpToTheLimit) {
  pdlb::conn_limiter l(2);
  EXPECT_TRUE(l.try_acquire());
  EXPECT_TRUE(l.try_acquire());
  EXPECT_FALSE(l.try_acquire());
  EXPECT_EQ(l.used(), 2u);
  l.release();
  EXPECT_EQ(l.used(), 1u);
  EXPECT_TRUE(l.try_acquire());
}

TEST(ConnLimiter, AReleasedSlotGoesToTheWaiter) {
  net::io_context ioc;
  pdlb::conn_limiter l(1);
  ASSERT_TRUE(l.try_acquire());
  std::optional<pdlb::error_code> got;
  net::co_spawn(ioc, l.acquire(clock_type::now() + 10s), [&](std::exception_ptr, pdlb::error_code ec) { got = ec; });
  ioc.poll();
  EXPECT_FALSE(got.has_value());
  EXPECT_TRUE(l.has_waiters());
  l.release();  // handed straight to the waiter
  ioc.run_for(1s);
  ASSERT_TRUE(got.has_value());
  EXPECT_FALSE(*got);
  EXPECT_EQ(l.used(), 1u);
  EXPECT_FALSE(l.has_waiters());
}

TEST(ConnLimiter, AWaiterGivesUpAtItsDeadlineWithPoolExhausted) {
  net::io_context ioc;
  pdlb::conn_limiter l(1);
  ASSERT_TRUE(l.try_acquire());
  std::optional<pdlb::error_code> got;
  net::co_spawn(ioc, l.acquire(clock_type::now() + 50ms), [&](std::exception_ptr, pdlb::error_code ec) { got = ec; });
  ioc.run_for(2s);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, pdlb::upstream_errc::pool_exhausted);
  EXPECT_FALSE(l.has_waiters());
  EXPECT_EQ(l.used(), 1u);
}

TEST(ConnLimiter, ACancelledWaiterReportsOperationAbortedAndLeavesTheQueue) {
  net::io_context ioc;
  pdlb::conn_limiter l(1);
  ASSERT_TRUE(l.try_acquire());
  net::cancellation_signal cancel;
  std::optional<pdlb::error_code> got;
  net::co_spawn(ioc, l.acquire(clock_type::now() + 10s),
                net::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr, pdlb::error_code ec) { got = ec; }));
  ioc.poll();
  ASSERT_TRUE(l.has_waiters());
  cancel.emit(net::cancellation_type::terminal);
  ioc.run_for(1s);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, net::error::operation_aborted);
  EXPECT_FALSE(l.has_waiters());
  l.release();
  EXPECT_EQ(l.used(), 0u);
}

}  // namespace
