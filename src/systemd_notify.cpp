#include "pdlb/systemd_notify.hpp"

#include <spdlog/spdlog.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace pdlb {

namespace {

std::uint64_t parse_u64(const char* s) {
  if (!s || !*s) return 0;
  std::uint64_t v = 0;
  const char* end = s + std::strlen(s);
  auto [p, ec] = std::from_chars(s, end, v);
  return ec == std::errc() && p == end ? v : 0;
}

}  // namespace

systemd_notifier::systemd_notifier(std::string socket_path, std::chrono::microseconds watchdog)
    : socket_path_(std::move(socket_path)), watchdog_(watchdog) {
  // Only AF_UNIX sockets (a path or an abstract name); systemd 252 offers nothing else to services.
  if (socket_path_.size() < 2 || (socket_path_[0] != '/' && socket_path_[0] != '@') ||
      socket_path_.size() >= sizeof(sockaddr_un::sun_path)) {
    if (!socket_path_.empty()) spdlog::warn("NOTIFY_SOCKET '{}' is not a usable AF_UNIX address; not notifying", socket_path_);
    socket_path_.clear();
    return;
  }
  fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    spdlog::warn("cannot create the systemd notification socket: {}", std::strerror(errno));
    socket_path_.clear();
  }
}

systemd_notifier systemd_notifier::from_environment() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  if (!socket || !*socket) return {};
  std::chrono::microseconds watchdog{0};
  // WATCHDOG_PID names the process systemd watches; a child that inherited the variables must not ping.
  const char* pid = std::getenv("WATCHDOG_PID");
  if (!pid || !*pid || parse_u64(pid) == static_cast<std::uint64_t>(::getpid()))
    watchdog = std::chrono::microseconds(parse_u64(std::getenv("WATCHDOG_USEC")));
  return systemd_notifier(socket, watchdog);
}

systemd_notifier::~systemd_notifier() {
  if (fd_ >= 0) ::close(fd_);
}

systemd_notifier::systemd_notifier(systemd_notifier&& other) noexcept
    : socket_path_(std::move(other.socket_path_)), watchdog_(other.watchdog_), fd_(other.fd_) {
  other.socket_path_.clear();
  other.fd_ = -1;
}

systemd_notifier& systemd_notifier::operator=(systemd_notifier&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    socket_path_ = std::move(other.socket_path_);
    watchdog_ = other.watchdog_;
    fd_ = other.fd_;
    other.socket_path_.clear();
    other.fd_ = -1;
  }
  return *this;
}

std::error_code systemd_notifier::notify(std::string_view state) const {
  if (!enabled()) return {};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path_.data(), socket_path_.size());
  // An abstract name starts with a NUL byte instead of '@' and is not NUL-terminated.
  if (socket_path_[0] == '@') addr.sun_path[0] = '\0';
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path_.size() +
                                          (socket_path_[0] == '@' ? 0 : 1));
  for (;;) {
    ssize_t n = ::sendto(fd_, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), len);
    if (n >= 0) return {};
    if (errno != EINTR) return {errno, std::generic_category()};
  }
}

std::string systemd_notifier::reloading_message() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const auto usec = static_cast<std::uint64_t>(ts.tv_sec) * 1000000u + static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
  return "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec);
}

}  // namespace pdlb
