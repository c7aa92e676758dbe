// A timeout for the waits of one socket, checked lazily.
//
// Arming and cancelling an Asio timer per wait costs a timer-queue insert, a cancel and a handler
// call; a proxy waits once per request and once per streamed event. Here one timer per socket stays
// armed across waits: a wait records when it began, and when the timer fires it cancels the socket's
// operations only if the wait in progress is older than its timeout (otherwise it sets itself for
// that wait's end). Between waits it lapses until the next one. Its state is shared with the timer's
// handler, so a late expiry never touches a socket that is gone.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>

namespace pdlb {

class lazy_deadline {
 public:
  using clock = std::chrono::steady_clock;

  lazy_deadline(const boost::asio::any_io_executor& ex, boost::asio::ip::tcp::socket& socket);
  ~lazy_deadline();
  lazy_deadline(const lazy_deadline&) = delete;
  lazy_deadline& operator=(const lazy_deadline&) = delete;

  /// Starts a wait that may last `timeout`.
  void begin(std::chrono::milliseconds timeout);
  /// Ends the wait; true if the timeout cut it short (the socket's operations were cancelled).
  bool end();

 private:
  struct state;
  static void arm(const std::shared_ptr<state>& s, clock::time_point at);
  std::shared_ptr<state> state_;
};

}  // namespace pdlb
