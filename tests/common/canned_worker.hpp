// Raw loopback servers for tests that need a peer misbehaving in a precise way (fixed bytes, a
// handshake that never completes), which no real worker can be made to do.
#pragma once

#include <cstdint>
#include <string>
#include <thread>

#include <netinet/in.h>

namespace pdlb::test {

/// A listening socket on 127.0.0.1, port 0; `addr` receives its address. Throws if it cannot.
int loopback_listener(int backlog, sockaddr_in& addr);

/// A worker that answers its first connection with fixed bytes, whatever the request, then closes.
class canned_worker {
 public:
  /// Listens at once; `response` is sent whole to the first client after its request starts.
  explicit canned_worker(std::string response);
  ~canned_worker();
  canned_worker(const canned_worker&) = delete;
  canned_worker& operator=(const canned_worker&) = delete;

  /// "http://127.0.0.1:PORT".
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  std::string response_;
  int listener_ = -1;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

}  // namespace pdlb::test
