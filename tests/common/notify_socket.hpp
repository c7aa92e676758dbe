// The systemd side of sd_notify(3) for tests: a datagram socket to pass as NOTIFY_SOCKET, and a way
// to await the messages pdlb sends to it.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace pdlb::test {

class notify_socket {
 public:
  /// Binds a fresh AF_UNIX datagram socket: abstract ("@pdlb-test-...") or a path in a temporary
  /// directory. Throws std::runtime_error if it cannot.
  explicit notify_socket(bool abstract = true);
  ~notify_socket();
  notify_socket(const notify_socket&) = delete;
  notify_socket& operator=(const notify_socket&) = delete;

  /// The value for $NOTIFY_SOCKET.
  const std::string& address() const { return address_; }
  /// The next message, or nullopt if none arrives within `timeout`.
  std::optional<std::string> receive(std::chrono::milliseconds timeout);
  /// Receives until a message contains `text`, which it returns; nullopt on timeout. Messages
  /// received meanwhile are skipped.
  std::optional<std::string> wait_for(const std::string& text, std::chrono::milliseconds timeout);

 private:
  int fd_ = -1;
  std::string address_;
  std::string dir_;  // the temporary directory of a path socket
};

/// A temporary directory, removed with everything in it.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const { return path_; }
  /// Writes `content` to the file `name` in it (replacing it atomically) and returns its path.
  std::string write(const std::string& name, const std::string& content) const;

 private:
  std::string path_;
};

}  // namespace pdlb::test
