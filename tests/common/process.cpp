#include "common/process.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <fcntl.h>
#include <sys/inotify.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace pdlb::test {

child_process::child_process(std::vector<std::string> argv,
                             std::map<std::string, std::string> extra_env) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos && extra_env.count(kv.substr(0, eq))) continue;
    env_storage.push_back(std::move(kv));
  }
  for (auto& [k, v] : extra_env) env_storage.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    // A new process group, so that a killed test takes its helpers' children down too, and death
    // with the test process itself, so that a test killed by a timeout leaves nothing running.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::execve(args[0], args.data(), envp.data());
    std::fprintf(stderr, "exec %s failed: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fds[1]);
  out_fd_ = fds[0];
  reader_ = std::thread([this] { reader_loop(); });
}

child_process::~child_process() { end_and_check(); }

std::chrono::milliseconds child_process::exit_timeout() {
  if (const char* env = std::getenv("PDLB_TEST_EXIT_TIMEOUT_MS"); env && *env)
    return std::chrono::milliseconds(std::strtoll(env, nullptr, 10));
#ifdef PDLB_TEST_SLOW_CHILDREN
  // ASan's leak check at exit, TSan's bookkeeping and gcov's data files make an exit slower; on a
  // loaded 2-core machine a sanitized pdlb can take several seconds to drain and leave.
  return std::chrono::seconds(60);
#else
  return std::chrono::seconds(5);
#endif
}

void child_process::expect_exit(int status) {
  std::lock_guard lock(mutex_);
  expected_status_ = status;
}

void child_process::expect_any_exit() {
  std::lock_guard lock(mutex_);
  any_exit_ok_ = true;
}

std::optional<int> child_process::kill_for_test(int sig, std::chrono::milliseconds timeout) {
  expect_any_exit();
  signal(sig);
  return wait_exit(timeout);
}

void child_process::end_and_check() {
  const std::string name = pid_ >= 0 ? "child " + std::to_string(pid_) : "child";
  bool terminated = false;   // teardown sent SIGTERM
  bool needed_kill = false;  // and then SIGKILL
  bool output_ended = false;
  {
    std::unique_lock lock(mutex_);
    reap_locked(false);
    output_ended = eof_;
  }
  // A child whose output has ended is exiting by itself: let it finish before judging.
  if (output_ended) wait_exit_quietly(exit_timeout());
  {
    std::unique_lock lock(mutex_);
    terminated = !exit_status_;
  }
  if (terminated) {
    signal(SIGTERM);
    wait_exit_quietly(exit_timeout());
    std::lock_guard lock(mutex_);
    if (!exit_status_) {
      needed_kill = true;
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      reap_locked(true);
    }
  }
  {
    // The output pipe ends when the child's process group does; a helper of the child that kept
    // it open after the child itself exited is ended so that the report is complete.
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, std::chrono::seconds(5), [this] { return eof_; })) ::kill(-pid_, SIGKILL);
  }
  if (reader_.joinable()) reader_.join();
  if (out_fd_ >= 0) ::close(out_fd_);

  // Judged only now that the output is complete: LeakSanitizer reports at exit.
  const std::string out = output();
  std::lock_guard lock(mutex_);
  for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                             "WARNING: ThreadSanitizer"}) {
    if (out.find(marker) != std::string::npos) {
      ADD_FAILURE() << "sanitizer report from " << name << ":\n" << out;
      return;
    }
  }
  if (any_exit_ok_) return;
  const int status = exit_status_.value_or(-1);
  if (needed_kill) {
    ADD_FAILURE() << name << " did not exit within " << exit_timeout().count()
                  << " ms of SIGTERM and was killed; output:\n" << out;
  } else if (status != expected_status_ && (terminated || !status_checked_by_test_)) {
    ADD_FAILURE() << name << (terminated ? " exited after SIGTERM" : " exited by itself")
                  << " with status " << status << ", expected " << expected_status_
                  << "; output:\n" << out;
  }
}

void child_process::reader_loop() {
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(out_fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    std::lock_guard lock(mutex_);
    if (n <= 0) {
      if (!partial_.empty()) lines_.push_back(std::move(partial_));
      partial_.clear();
      eof_ = true;
      cv_.notify_all();
      return;
    }
    if (std::getenv("PDLB_TEST_ECHO")) ::write(2, buf, static_cast<std::size_t>(n));
    partial_.append(buf, static_cast<std::size_t>(n));
    std::size_t start = 0;
    for (;;) {
      auto nl = partial_.find('\n', start);
      if (nl == std::string::npos) break;
      lines_.push_back(partial_.substr(start, nl - start));
      start = nl + 1;
    }
    partial_.erase(0, start);
    cv_.notify_all();
  }
}

namespace {
std::vector<std::string> groups(const std::smatch& m) {
  std::vector<std::string> out;
  for (const auto& g : m) out.push_back(g.str());
  return out;
}
}  // namespace

std::optional<std::vector<std::string>> child_process::wait_for_line(const std::regex& re,
                                                        std::chrono::milliseconds timeout,
                                                        std::size_t from_line) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mutex_);
  std::size_t checked = from_line;
  for (;;) {
    for (; checked < lines_.size(); ++checked) {
      std::smatch m;
      if (std::regex_search(lines_[checked], m, re)) return groups(m);
    }
    if (eof_) return std::nullopt;
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      for (; checked < lines_.size(); ++checked) {
        std::smatch m;
        if (std::regex_search(lines_[checked], m, re)) return groups(m);
      }
      return std::nullopt;
    }
  }
}

std::size_t child_process::line_count() const {
  std::lock_guard lock(mutex_);
  return lines_.size();
}

std::string child_process::output() const {
  std::lock_guard lock(mutex_);
  std::string all;
  for (auto& l : lines_) {
    all += l;
    all += '\n';
  }
  all += partial_;
  return all;
}

void child_process::signal(int sig) {
  std::lock_guard lock(mutex_);
  if (!exit_status_) ::kill(pid_, sig);
}

void child_process::reap_locked(bool block) {
  if (exit_status_) return;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  if (r == pid_) {
    if (WIFEXITED(status)) exit_status_ = WEXITSTATUS(status);
    else if (WIFSIGNALED(status)) exit_status_ = 128 + WTERMSIG(status);
    else exit_status_ = -1;
  }
}

std::optional<int> child_process::wait_exit(std::chrono::milliseconds timeout) {
  auto status = wait_exit_quietly(timeout);
  std::lock_guard lock(mutex_);
  if (status) status_checked_by_test_ = true;
  return status;
}

std::optional<int> child_process::wait_exit_quietly(std::chrono::milliseconds timeout) {
  // The output pipe closes when the process (and any child sharing it) exits: wait for that
  // event, then reap.
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mutex_);
  cv_.wait_until(lock, deadline, [this] { return eof_; });
  reap_locked(false);
  while (!exit_status_ && std::chrono::steady_clock::now() < deadline) {
    // The pipe may stay open through a grandchild; fall back to waiting on the pid itself.
    lock.unlock();
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    lock.lock();
    if (r == pid_) {
      if (WIFEXITED(status)) exit_status_ = WEXITSTATUS(status);
      else if (WIFSIGNALED(status)) exit_status_ = 128 + WTERMSIG(status);
      break;
    }
    lock.unlock();
    ::poll(nullptr, 0, 10);
    lock.lock();
  }
  return exit_status_;
}

std::string new_ready_file_path() {
  static const std::string dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pdlb-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    return tmpl;
  }();
  static std::atomic<unsigned> counter{0};
  return dir + "/child-" + std::to_string(counter.fetch_add(1)) + ".ready";
}

std::optional<ready_info> wait_for_ready_file(child_process& proc, const std::string& path,
                                              std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string dir = std::filesystem::path(path).parent_path().string();
  int in = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (in < 0 || ::inotify_add_watch(in, dir.c_str(), IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
    if (in >= 0) ::close(in);
    throw std::runtime_error("inotify on " + dir + " failed: " + std::strerror(errno));
  }
  std::optional<ready_info> info;
  for (;;) {
    // Checked after the watch is in place, so a file renamed in between is not missed.
    info = read_ready_file(path);
    if (info || !proc.running() || std::chrono::steady_clock::now() >= deadline) break;
    // The wake-ups without an event only look whether the child died before getting ready.
    pollfd p{in, POLLIN, 0};
    ::poll(&p, 1, 100);
    char events[4096];
    while (::read(in, events, sizeof events) > 0) {
    }
  }
  ::close(in);
  if (!info) info = read_ready_file(path);  // written just before the child exited
  ::unlink(path.c_str());
  return info;
}

bool child_process::running() {
  std::lock_guard lock(mutex_);
  reap_locked(false);
  return !exit_status_;
}

}  // namespace pdlb::test
