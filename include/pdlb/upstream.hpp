// Pooled HTTP/1.1 client connections to workers.
//
// Each server thread keeps its own idle connections (upstream_pools, owned by its thread_context:
// no locks on the hot path); the connector limits are shared across threads. A request taken on a
// pooled connection that the worker closed while idle is retried once on a fresh connection, so a
// stale keep-alive never fails a client.
#pragma once

#include "pdlb/config.hpp"
#include "pdlb/thread_context.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <list>
#include <vector>

namespace pdlb {

namespace detail {
struct pooled_conn;
}

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

/// A counting semaphore for connection slots, awaitable from any thread's io_context. Waiters are
/// served in order, each slot released going to the longest waiter, and one may wait for several
/// slots at once: a PD request takes its two connections' slots together (see reserve_pair), so
/// that requests holding one slot each never wait on each other.
class conn_limiter {
 public:
  explicit conn_limiter(std::size_t limit) : limit_(limit) {}
  /// Takes `n` slots if they are free and nobody waits.
  bool try_acquire(std::size_t n = 1);
  /// Waits for `n` slots until `deadline`: no error if they were taken, upstream_errc::pool_exhausted
  /// at the deadline, operation_aborted if the wait was cancelled (nothing is kept then).
  net::awaitable<error_code> acquire(std::chrono::steady_clock::time_point deadline, std::size_t n = 1);
  /// Gives `n` slots back (to the longest waiters, if any).
  void release(std::size_t n = 1);
  /// Changes the limit (a reload): a higher one serves waiters at once; under a lower one, slots in
  /// use above it are given back as they are released.
  void set_limit(std::size_t limit);
  /// Slots in use.
  std::size_t used() const;
  /// True if somebody waits for a slot.
  bool has_waiters() const;
  /// What to do each time somebody starts to wait (called on the waiting thread, without the lock):
  /// have every thread close its idle connections holding slots that are waited for (see
  /// upstream_pools::prune); otherwise one parked on another thread holds its slot until a prune.
  /// Set before the limiter is used.
  void on_wait(std::function<void()> f) { on_wait_ = std::move(f); }
  void notify_wait() const {
    if (on_wait_) on_wait_();
  }

  struct waiter;

 private:
  void grant_one(std::vector<std::shared_ptr<waiter>>& woken);
  static void wake(std::vector<std::shared_ptr<waiter>>& woken);

  mutable std::mutex mutex_;
  std::size_t limit_;
  std::size_t used_ = 0;
  std::list<std::shared_ptr<waiter>> waiters_;
  std::atomic<std::size_t> waiting_{0};  // waiters_.size(), written under the mutex
  std::function<void()> on_wait_;
};

/// Timeouts and limits for upstream calls.
struct upstream_options {
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  /// Longest wait for response headers, and for each piece of the body (an idle timeout).
  std::chrono::milliseconds response_timeout{std::chrono::seconds(600)};
  /// Pooled connections idle longer than this are closed rather than reused.
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(4)};
  std::uint32_t header_limit = 64 * 1024;
};

/// One worker's connection slots and address, for all threads.
class upstream_host {
 public:
  /// `threads`: the server threads whose pools may hold its idle connections (for the count).
  upstream_host(worker_url url, std::size_t per_host_limit, std::shared_ptr<conn_limiter> global_limit,
                upstream_options opts, std::size_t threads = 1);
  ~upstream_host();
  upstream_host(const upstream_host&) = delete;
  upstream_host& operator=(const upstream_host&) = delete;

  const worker_url& url() const;
  /// Open connections (idle and busy) to this worker.
  std::size_t open_connections() const;
  /// Connections established to this worker so far.
  std::uint64_t connects() const;
  /// Idle connections to this worker in all threads' pools (each thread's count as it last stored it).
  std::size_t idle_connections() const;
  /// The worker left: each thread closes its idle connections to it at its next prune.
  void retire();
  /// New timeouts and a new per-worker limit (a reload). Only while no thread uses this host: the
  /// service parks the I/O threads for it. Calls waiting already keep the timeout they began with.
  void reconfigure(const upstream_options& opts, std::size_t per_host_limit);

 private:
  struct impl;  // defined in upstream.cpp
  friend class upstream_call;
  friend class upstream_pools;
  friend struct detail::pooled_conn;
  std::shared_ptr<impl> impl_;  // shared with its pooled connections, which may outlive this
};

/// One thread's idle connections to every worker (owned by its thread_context).
class upstream_pools {
 public:
  /// The pools of server thread `thread` (its index, for the per-thread idle counts).
  explicit upstream_pools(std::size_t thread = 0);
  ~upstream_pools();
  upstream_pools(const upstream_pools&) = delete;
  upstream_pools& operator=(const upstream_pools&) = delete;

  /// Closes every idle connection (at shutdown).
  void close_all();
  /// Closes the connections idle longer than their worker's idle timeout (so that a quiet pdlb does
  /// not hold sockets the workers have long closed), and all of those to retired workers or holding
  /// slots that somebody waits for.
  void prune();
  /// Idle connections held.
  std::size_t idle_count() const;

 private:
  struct impl;  // defined in upstream.cpp
  friend class upstream_call;
  std::unique_ptr<impl> impl_;
};

/// Body bytes handed out by upstream_call::read_some(). They sit in the thread's body scratch,
/// lent until `lease` is reset or this object destroyed, which must happen before its holder
/// suspends (see scratch_buffer).
struct body_piece {
  scratch_buffer::lease lease;  ///< Empty when the piece has no bytes.
  std::size_t size = 0;
  bool done = false;  ///< The body ended with this piece.
  std::string_view bytes() const { return lease ? std::string_view(lease.data(), size) : std::string_view(); }
};

/// One request to a worker: start() sends it and reads the response header, read_some()/read_all()
/// give the body, release() returns the connection to the pool. Destroying a call that did not
/// finish closes its connection, which is how a leg is cancelled: the worker sees the close.
class upstream_call {
 public:
  enum class phase { idle, acquire, connect, send, header, body, done };

  /// A call from `ctx`'s thread, on which it must stay.
  upstream_call(upstream_host& host, thread_context& ctx);
  ~upstream_call();
  upstream_call(const upstream_call&) = delete;
  upstream_call& operator=(const upstream_call&) = delete;

  /// Reserves a connection for each of two calls made together (a PD request's legs, both needed
  /// before either can finish): idle ones or slots for new ones, all or nothing, waiting if needed
  /// (until the response timeout; the error of the wait otherwise). start() then uses them.
  static net::awaitable<error_code> reserve_pair(upstream_call& first, upstream_call& second);
  /// reserve_pair without waiting (no coroutine frame: the usual case). False if one must wait;
  /// what it took is kept for reserve_pair to give back.
  static bool try_reserve_pair(upstream_call& first, upstream_call& second);
  /// Sends `method path` with `body` (JSON) and waits for the response header. `extra_headers` are
  /// preformatted "Name: value\r\n" lines (the request id, trace context).
  net::awaitable<error_code> start(std::string_view method, std::string_view path,
                                   std::string_view body, std::string_view extra_headers = {});
  /// Status code of the response (after start(); still valid after release()).
  unsigned status() const;
  /// Content-Type of the response (after start()).
  std::string_view content_type() const;
  /// Reads the next body bytes (at least one, unless the body ended).
  net::awaitable<error_code> read_some(body_piece& out);
  /// Reads the whole remaining body, appending to out, failing past `limit` bytes.
  net::awaitable<error_code> read_all(std::string& out, std::size_t limit);
  /// Returns the connection to the pool if the response ended cleanly and allows keep-alive.
  void release();
  /// Closes the connection at once (cancels the worker's request).
  void abort();
  /// Where the call was when it failed, for error messages.
  phase where() const { return phase_; }
  static std::string_view phase_name(phase p);

 private:
  struct impl;  // defined in the .cpp file
  std::unique_ptr<impl> impl_;
  phase phase_ = phase::idle;
};

}  // namespace pdlb

namespace boost::system {
template <>
struct is_error_code_enum<pdlb::upstream_errc> : std::true_type {};
}  // namespace boost::system
