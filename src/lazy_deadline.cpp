#include "pdlb/lazy_deadline.hpp"

namespace pdlb {

struct lazy_deadline::state {
  explicit state(const boost::asio::any_io_executor& ex) : timer(ex) {}
  boost::asio::steady_timer timer;
  boost::asio::ip::tcp::socket* socket = nullptr;  // null once the owner is gone
  bool armed = false;       // the timer has a pending wait (due at timer.expiry())
  bool waiting = false;     // a wait is under way
  bool timed_out = false;
  std::uint64_t generation = 0;  // tells the current timer wait from one replaced by arm()
  clock::time_point due;  // end of the wait under way
};

lazy_deadline::lazy_deadline(const boost::asio::any_io_executor& ex, boost::asio::ip::tcp::socket& socket)
    : state_(std::make_shared<state>(ex)) {
  state_->socket = &socket;
}

lazy_deadline::~lazy_deadline() {
  state_->socket = nullptr;
  state_->timer.cancel();
}

void lazy_deadline::arm(const std::shared_ptr<state>& s, clock::time_point at) {
  s->armed = true;
  const auto generation = ++s->generation;
  s->timer.expires_at(at);  // cancels a pending wait, whose handler sees a newer generation
  s->timer.async_wait([s, generation](boost::system::error_code ec) {
    if (generation != s->generation) return;  // replaced by a later arm()
    s->armed = false;
    if (ec || !s->socket || !s->waiting) return;  // cancelled, owner gone, or nothing to time
    if (clock::now() < s->due) {
      arm(s, s->due);
      return;
    }
    s->timed_out = true;
    boost::system::error_code ignored;
    s->socket->cancel(ignored);
  });
}

void lazy_deadline::begin(std::chrono::milliseconds timeout) {
  auto& s = *state_;
  s.waiting = true;
  s.timed_out = false;
  s.due = clock::now() + timeout;
  // Set the timer only if it would fire too late for this wait (or not at all); firing early just
  // sets it again.
  if (!s.armed || s.timer.expiry() > s.due) arm(state_, s.due);
}

bool lazy_deadline::end() {
  state_->waiting = false;
  return state_->timed_out;
}

}  // namespace pdlb
