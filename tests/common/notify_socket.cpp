#include "common/notify_socket.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace pdlb::test {

namespace {

std::string make_temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "pdlb-test-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
  return tmpl;
}

}  // namespace

notify_socket::notify_socket(bool abstract) {
  static std::atomic<int> counter{0};
  fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  socklen_t len = 0;
  if (abstract) {
    address_ = "@pdlb-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    std::memcpy(addr.sun_path + 1, address_.data() + 1, address_.size() - 1);
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address_.size());
  } else {
    dir_ = make_temp_dir();
    address_ = dir_ + "/notify";
    std::memcpy(addr.sun_path, address_.data(), address_.size());
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address_.size() + 1);
  }
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0)
    throw std::runtime_error("bind " + address_ + ": " + std::strerror(errno));
}

notify_socket::~notify_socket() {
  if (fd_ >= 0) ::close(fd_);
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

std::optional<std::string> notify_socket::receive(std::chrono::milliseconds timeout) {
  pollfd p{fd_, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (r <= 0) return std::nullopt;
  char buf[4096];
  ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
  if (n < 0) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

std::optional<std::string> notify_socket::wait_for(const std::string& text, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    auto m = receive(left);
    if (!m) return std::nullopt;
    if (m->find(text) != std::string::npos) return m;
  }
}

temp_dir::temp_dir() : path_(make_temp_dir()) {}

temp_dir::~temp_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string temp_dir::write(const std::string& name, const std::string& content) const {
  const std::string target = path_ + "/" + name;
  const std::string tmp = target + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, target);
  return target;
}

}  // namespace pdlb::test
