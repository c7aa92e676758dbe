// Starting a real child process (pdlb, pdlb-sim, minilb) for a test, reading its output as it
// comes, and waiting for a line of it: tests await the event ("listening on ...") instead of
// sleeping.
//
// Every child is checked on its way out. One still running when its child_process is destroyed
// gets SIGTERM and a few seconds to exit (longer under sanitizers), so that LeakSanitizer runs and
// coverage data is written; SIGKILL comes only as a last resort. The test fails, with the child's
// output attached, if the child needed SIGKILL, ended with a status the test did not expect, or
// printed a sanitizer report at any time. A test that crashes or kills a child on purpose says so
// with kill_for_test() or expect_exit().
#pragma once

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "pdlb/ready_file.hpp"

namespace pdlb::test {

class child_process {
 public:
  /// Starts argv[0] with arguments; its stdout and stderr are captured together.
  explicit child_process(std::vector<std::string> argv,
                         std::map<std::string, std::string> extra_env = {});
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  /// Waits until a line of output matches `re`; returns the match groups (0 is the whole match),
  /// or nullopt on timeout or exit. Lines already seen count too, starting from line `from_line`.
  std::optional<std::vector<std::string>> wait_for_line(const std::regex& re,
                                           std::chrono::milliseconds timeout = std::chrono::seconds(20),
                                           std::size_t from_line = 0);
  /// Number of complete output lines seen so far.
  std::size_t line_count() const;
  /// Everything printed so far.
  std::string output() const;

  /// Sends a signal.
  void signal(int sig);
  /// Waits for exit; returns the exit status (128+signal if killed), or nullopt on timeout. A
  /// status returned here is the test's to check: teardown no longer judges it.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);

  /// Declares the status the child must end with (by itself, or on teardown's SIGTERM), instead
  /// of 0; e.g. a start-up that must fail. Checked at teardown.
  void expect_exit(int status);
  /// Declares that the test ends the child on purpose in a way it does not check (e.g. a worker
  /// whose crash is the point of the test): any status, SIGKILL included, passes teardown.
  /// Sanitizer reports still fail the test.
  void expect_any_exit();
  /// Ends the child on purpose with `sig` (a crash, for a test of what others do then) and waits
  /// for it; returns its status (128+sig), or nullopt if it did not end within `timeout`.
  std::optional<int> kill_for_test(int sig = SIGKILL,
                                   std::chrono::milliseconds timeout = std::chrono::seconds(10));

  /// How long teardown waits after SIGTERM before SIGKILL: 5 s, 60 s in sanitizer or coverage
  /// builds (PDLB_TEST_SLOW_CHILDREN), or PDLB_TEST_EXIT_TIMEOUT_MS from the environment.
  static std::chrono::milliseconds exit_timeout();
  /// True while the process runs.
  bool running();
  pid_t pid() const { return pid_; }

 private:
  void reader_loop();
  void reap_locked(bool block);
  // wait_exit() without handing the status to the test.
  std::optional<int> wait_exit_quietly(std::chrono::milliseconds timeout);
  // Teardown: ends the child if needed, collects all its output, and records what failed.
  void end_and_check();

  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
  std::string partial_;
  bool eof_ = false;
  std::optional<int> exit_status_;
  bool status_checked_by_test_ = false;  // wait_exit() or kill_for_test() returned it
  bool any_exit_ok_ = false;
  int expected_status_ = 0;
};

/// A fresh path for a child's --ready-file, in a directory private to this test process.
std::string new_ready_file_path();

/// Waits until `path` holds a complete ready file (inotify: no polling of the file), the child
/// exits, or `timeout` passes; returns what the file says, and removes it.
std::optional<ready_info> wait_for_ready_file(child_process& proc, const std::string& path,
                                              std::chrono::milliseconds timeout);

}  // namespace pdlb::test
