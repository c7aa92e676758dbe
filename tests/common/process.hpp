// Starting a real child process (pdlb, pdlb-sim, minilb) for a test, reading its output as it
// comes, and waiting for a line of it: tests await the event ("listening on ...") instead of
// sleeping.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

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
  /// Waits for exit; returns the exit status (128+signal if killed), or nullopt on timeout.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  /// True while the process runs.
  bool running();
  pid_t pid() const { return pid_; }

 private:
  void reader_loop();
  void reap_locked(bool block);

  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
  std::string partial_;
  bool eof_ = false;
  std::optional<int> exit_status_;
};

}  // namespace pdlb::test
