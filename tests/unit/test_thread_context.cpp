// The per-thread scratch buffers: lent to one holder at a time, checked in checked builds.
#include "pdlb/thread_context.hpp"

#include <gtest/gtest.h>

TEST(ScratchBuffer, ALeaseGivenBackCanBeTakenAgain) {
  pdlb::scratch_buffer buf(64);
  {
    auto a = buf.take();
    EXPECT_EQ(a.size(), 64u);
    a.data()[0] = 'x';
  }
  auto b = buf.take();
  EXPECT_TRUE(static_cast<bool>(b));
  b.reset();
  EXPECT_FALSE(static_cast<bool>(b));
}

TEST(ScratchBuffer, TakingItWhileLentAbortsInCheckedBuilds) {
#ifdef PDLB_CHECKED
  pdlb::scratch_buffer buf(64);
  auto held = buf.take();  // a holder that suspended with it
  EXPECT_DEATH((void)buf.take(), "taken while lent");
#else
  GTEST_SKIP() << "the check is compiled into checked builds only (Debug, sanitizers, fuzzers)";
#endif
}

TEST(ScratchBuffer, AReturnedBufferIsPoisonedInCheckedBuilds) {
#ifdef PDLB_CHECKED
  pdlb::scratch_buffer buf(16);
  char* p = nullptr;
  {
    auto a = buf.take();
    p = a.data();
    std::fill(p, p + 16, 'a');
  }
  // A holder that kept the pointer past its lease reads garbage, which tests notice.
  EXPECT_EQ(static_cast<unsigned char>(p[0]), 0xDBu);
#else
  GTEST_SKIP() << "the check is compiled into checked builds only (Debug, sanitizers, fuzzers)";
#endif
}

TEST(ThreadContext, OwnsItsIndexAndTwoSeparateScratchBuffers) {
  pdlb::thread_context ctx(3);
  EXPECT_EQ(ctx.index(), 3u);
  auto body = ctx.body_scratch().take();
  auto socket = ctx.socket_scratch().take();  // both at once: separate buffers
  EXPECT_NE(body.data(), socket.data());
  EXPECT_EQ(body.size(), pdlb::thread_context::scratch_size);
}
