#include "common/canned_worker.hpp"

#include <stdexcept>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

namespace pdlb::test {

int loopback_listener(int backlog, sockaddr_in& addr) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  addr = sockaddr_in{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, backlog) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot listen on 127.0.0.1");
  }
  return fd;
}

canned_worker::canned_worker(std::string response) : response_(std::move(response)) {
  sockaddr_in addr;
  listener_ = loopback_listener(4, addr);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] {
    int fd = ::accept(listener_, nullptr, nullptr);
    if (fd < 0) return;  // shut down before anyone came
    char buf[4096];
    (void)::recv(fd, buf, sizeof buf, 0);  // the request's start is enough
    for (std::size_t off = 0; off < response_.size();) {
      ssize_t n = ::send(fd, response_.data() + off, response_.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<std::size_t>(n);
    }
    ::shutdown(fd, SHUT_WR);
    while (::recv(fd, buf, sizeof buf, 0) > 0) {
    }
    ::close(fd);
  });
}

canned_worker::~canned_worker() {
  ::shutdown(listener_, SHUT_RDWR);  // wakes the accept if nobody came
  thread_.join();
  ::close(listener_);
}

}  // namespace pdlb::test
