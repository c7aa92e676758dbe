// Pooled HTTP/1.1 client connections to one worker.
//
// Each server thread keeps its own idle list per worker (no locks on the hot path); the connector
// limits are shared across threads. A request taken on a pooled connection that the worker closed
// while idle is retried once on a fresh connection, so a stale keep-alive never fails a client.
#pragma once

#include "pdlb/config.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <list>

namespace pdlb {

namespace net = boost::asio;
using error_code = boost::system::error_code;

/// Errors of the pool itself (the rest are Asio/Beast errors).
enum class upstream_errc {
  pool_exhausted = 1,   ///< No connection slot became free before the deadline.
  response_too_large,   ///< The body exceeded the caller's limit.
  bad_response,         ///< The worker's answer was not valid HTTP.
};
const boost::system::error_category& upstream_category();
error_code make_error_code(upstream_errc e);

/// A counting semaphore for connection slots, awaitable from any thread's io_context.
class conn_limiter {
 public:
  explicit conn_limiter(std::size_t limit) : limit_(limit) {}
  /// Takes a slot if one is free.
  bool try_acquire();
  /// Waits for a slot until `deadline`: no error if one was taken, upstream_errc::pool_exhausted
  /// at the deadline, operation_aborted if the wait was cancelled.
  net::awaitable<error_code> acquire(std::chrono::steady_clock::time_point deadline);
  /// Gives a slot back (to the longest waiter, if any).
  void release();
  /// Slots in use.
  std::size_t used() const;
  /// True if somebody waits for a slot.
  bool has_waiters() const;

  struct waiter;

 private:
  mutable std::mutex mutex_;
  std::size_t limit_;
  std::size_t used_ = 0;
  std::list<std::shared_ptr<waiter>> waiters_;
};

/// The calling thread's buffer for body bytes read from workers (upstream_scratch_size bytes). It
/// may only be used between a read and the (copying) write that forwards it, with no suspension in
/// between; then one buffer per thread serves every stream on it and none stays resident per stream.
char* upstream_scratch();
inline constexpr std::size_t upstream_scratch_size = 64 * 1024;

/// Timeouts and limits for upstream calls.
struct upstream_options {
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  /// Longest wait for response headers, and for each piece of the body (an idle timeout).
  std::chrono::milliseconds response_timeout{std::chrono::seconds(600)};
  /// Pooled connections idle longer than this are closed rather than reused.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(4)};
  std::uint32_t header_limit = 64 * 1024;
};

/// One worker's connections, for all threads.
class upstream_host {
 public:
  upstream_host(worker_url url, std::size_t threads, std::size_t per_host_limit,
                std::shared_ptr<conn_limiter> global_limit, upstream_options opts);
  ~upstream_host();
  upstream_host(const upstream_host&) = delete;
  upstream_host& operator=(const upstream_host&) = delete;

  const worker_url& url() const;
  /// Open connections (idle and busy) to this worker.
  std::size_t open_connections() const;
  /// Closes the idle connections of one thread; call it on that thread.
  void close_idle(std::size_t thread);
  /// Closes one thread's idle connections older than the idle timeout (so that a quiet pdlb does
  /// not hold sockets the workers have long closed); call it on that thread.
  void prune_idle(std::size_t thread);

  struct impl;
  impl& get_impl() { return *impl_; }

 private:
  std::unique_ptr<impl> impl_;
};

/// One request to a worker: start() sends it and reads the response header, read_some()/read_all()
/// give the body, release() returns the connection to the pool. Destroying a call that did not
/// finish closes its connection, which is how a leg is cancelled: the worker sees the close.
class upstream_call {
 public:
  enum class phase { idle, acquire, connect, send, header, body, done };

  upstream_call(upstream_host& host, std::size_t thread);
  ~upstream_call();
  upstream_call(const upstream_call&) = delete;
  upstream_call& operator=(const upstream_call&) = delete;

  /// Sends `method path` with `body` (JSON) and waits for the response header.
  net::awaitable<error_code> start(std::string_view method, std::string_view path,
                                   std::string_view body);
  /// Status code of the response (after start(); still valid after release()).
  unsigned status() const;
  /// Content-Type of the response (after start()).
  std::string_view content_type() const;
  /// Reads some body bytes into buf (up to cap); n is how many; done is true once the body ended.
  net::awaitable<error_code> read_some(char* buf, std::size_t cap, std::size_t& n, bool& done);
  /// Reads the whole remaining body, appending to out, failing past `limit` bytes.
  net::awaitable<error_code> read_all(std::string& out, std::size_t limit);
  /// Returns the connection to the pool if the response ended cleanly and allows keep-alive.
  void release();
  /// Closes the connection at once (cancels the worker's request).
  void abort();
  /// Where the call was when it failed, for error messages.
  phase where() const { return phase_; }
  static std::string_view phase_name(phase p);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
  phase phase_ = phase::idle;
};

}  // namespace pdlb

namespace boost::system {
template <>
struct is_error_code_enum<pdlb::upstream_errc> : std::true_type {};
}  // namespace boost::system
