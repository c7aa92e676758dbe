// The test harness itself: every child is checked on its way out (tests/common/process.hpp).
#include "common/process.hpp"

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <regex>

namespace pdlb::test {
namespace {

using namespace std::chrono_literals;

// A shell child that prints "up" once its traps are set, so a signal never beats them.
std::unique_ptr<child_process> shell(const std::string& script) {
  auto p = std::make_unique<child_process>(std::vector<std::string>{"/bin/sh", "-c", script});
  EXPECT_TRUE(p->wait_for_line(std::regex("^up$"), 10s)) << p->output();
  return p;
}

// Teardown's wait after SIGTERM, shortened for the child that ignores it.
struct short_exit_timeout {
  short_exit_timeout() { ::setenv("PDLB_TEST_EXIT_TIMEOUT_MS", "300", 1); }
  ~short_exit_timeout() { ::unsetenv("PDLB_TEST_EXIT_TIMEOUT_MS"); }
};

TEST(Teardown, ChildThatExitsZeroOnSigtermPasses) {
  auto p = shell("trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done");
  p.reset();
}

TEST(Teardown, ChildThatIgnoresSigtermIsKilledAndFailsTheTest) {
  short_exit_timeout quick;
  auto p = shell("trap '' TERM; echo up; while :; do sleep 0.05; done");
  EXPECT_NONFATAL_FAILURE(p.reset(), "was killed");
}

TEST(Teardown, NonZeroExitAfterSigtermFailsTheTestWithTheOutput) {
  auto p = shell("trap 'echo last-words; exit 3' TERM; echo up; while :; do sleep 0.05; done");
  EXPECT_NONFATAL_FAILURE(p.reset(), "last-words");
}

TEST(Teardown, UncheckedNonZeroExitByItselfFailsTheTest) {
  auto p = shell("echo up; exit 4");
  p->wait_for_line(std::regex("never"), 10s);  // returns when the output ends, at the exit
  EXPECT_NONFATAL_FAILURE(p.reset(), "exited by itself with status 4");
}

TEST(Teardown, StatusCheckedByTheTestIsNotJudgedAgain) {
  auto p = shell("echo up; exit 4");
  EXPECT_EQ(p->wait_exit(10s), 4);
  p.reset();
}

TEST(Teardown, ExpectedExitStatusPassesAndAnotherFails) {
  auto ok = shell("echo up; exit 2");
  ok->expect_exit(2);
  ok->wait_for_line(std::regex("never"), 10s);  // returns when the output ends, at the exit
  ok.reset();
  auto bad = shell("trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done");
  bad->expect_exit(2);
  EXPECT_NONFATAL_FAILURE(bad.reset(), "expected 2");
}

TEST(Teardown, KillForTestIsAcceptedWhateverTheStatus) {
  auto p = shell("echo up; while :; do sleep 0.05; done");
  EXPECT_EQ(p->kill_for_test(SIGKILL), 128 + SIGKILL);
  p.reset();
}

TEST(Teardown, SanitizerReportPrintedAtExitFailsTheTest) {
  // LeakSanitizer reports as the process exits, which is why the scan runs after the exit.
  auto p = shell("trap 'echo \"==1==ERROR: LeakSanitizer: detected memory leaks\"; exit 0' TERM; "
                 "echo up; while :; do sleep 0.05; done");
  EXPECT_NONFATAL_FAILURE(p.reset(), "sanitizer report");
}

TEST(Teardown, SanitizerReportFailsEvenAKilledOnPurposeChild) {
  auto p = shell("echo 'x.cpp:1: runtime error: signed integer overflow'; echo up; while :; do sleep 0.05; done");
  p->kill_for_test(SIGKILL);
  EXPECT_NONFATAL_FAILURE(p.reset(), "sanitizer report");
}

}  // namespace
}  // namespace pdlb::test
