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

TEST(ConnLimiter, AWaiterForTwoSlotsCollectsThemInTurnAndNobodyJumpsTheQueue) {
  net::io_context ioc;
  pdlb::conn_limiter l(2);
  ASSERT_TRUE(l.try_acquire(2));
  std::optional<pdlb::error_code> pair, single;
  net::co_spawn(ioc, l.acquire(clock_type::now() + 10s, 2), [&](std::exception_ptr, pdlb::error_code ec) { pair = ec; });
  ioc.poll();
  net::co_spawn(ioc, l.acquire(clock_type::now() + 10s), [&](std::exception_ptr, pdlb::error_code ec) { single = ec; });
  ioc.poll();
  l.release();  // one slot: the pair waiter holds it and still waits; the single one waits behind it
  ioc.poll();
  EXPECT_FALSE(pair.has_value());
  EXPECT_FALSE(single.has_value());
  EXPECT_FALSE(l.try_acquire()) << "a free-for-all taker would starve the waiter for two";
  l.release();
  ioc.run_for(1s);
  ASSERT_TRUE(pair.has_value());
  EXPECT_FALSE(*pair);
  EXPECT_FALSE(single.has_value());
  l.release(2);  // the pair is done: one slot to the single waiter, one free
  ioc.run_for(1s);
  ASSERT_TRUE(single.has_value());
  EXPECT_FALSE(*single);
  EXPECT_EQ(l.used(), 1u);
}

TEST(ConnLimiter, AWaiterForTwoThatGivesUpReturnsTheSlotItWasHanded) {
  net::io_context ioc;
  pdlb::conn_limiter l(2);
  ASSERT_TRUE(l.try_acquire(2));
  std::optional<pdlb::error_code> got;
  net::co_spawn(ioc, l.acquire(clock_type::now() + 100ms, 2), [&](std::exception_ptr, pdlb::error_code ec) { got = ec; });
  ioc.poll();
  l.release();  // handed to the waiter, which never gets its second one
  ioc.run_for(2s);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, pdlb::upstream_errc::pool_exhausted);
  EXPECT_EQ(l.used(), 1u) << "the slot handed to the waiter went back";
  EXPECT_TRUE(l.try_acquire());
}

TEST(ConnLimiter, ARaisedLimitServesWaitersAtOnceAndALoweredOneHoldsBackReleasedSlots) {
  net::io_context ioc;
  pdlb::conn_limiter l(1);
  ASSERT_TRUE(l.try_acquire());
  std::optional<pdlb::error_code> got;
  net::co_spawn(ioc, l.acquire(clock_type::now() + 10s), [&](std::exception_ptr, pdlb::error_code ec) { got = ec; });
  ioc.poll();
  ASSERT_TRUE(l.has_waiters());
  l.set_limit(2);  // a reload raised it
  ioc.run_for(1s);
  ASSERT_TRUE(got.has_value());
  EXPECT_FALSE(*got);
  EXPECT_EQ(l.used(), 2u);

  l.set_limit(1);  // lowered below what is in use: nothing is taken away
  EXPECT_EQ(l.used(), 2u);
  got.reset();
  ioc.restart();  // it ran out of work above
  net::co_spawn(ioc, l.acquire(clock_type::now() + 10s), [&](std::exception_ptr, pdlb::error_code ec) { got = ec; });
  ioc.poll();
  l.release();  // 2 in use over a limit of 1: this slot is not handed on
  ioc.poll();
  EXPECT_FALSE(got.has_value());
  EXPECT_EQ(l.used(), 1u);
  l.release();  // now under the limit: the waiter gets it
  ioc.run_for(1s);
  ASSERT_TRUE(got.has_value());
  EXPECT_FALSE(*got);
  EXPECT_EQ(l.used(), 1u);
}

}  // namespace
