// A small HTTP/1.1 server on Asio/Beast coroutines, shared by pdlb and pdlb-sim.
//
// One io_context per thread; a single acceptor hands each connection to the next thread, and the
// connection lives there for its whole life, so handlers need no locking for per-thread state.
// The server enforces header/body limits and timeouts, answers its own errors as JSON, watches the
// client socket while a handler runs (a client that closes cancels the handler), and shuts down
// gracefully.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pdlb/json_escape.hpp"  // json_error_body, for every handler
#include "pdlb/thread_context.hpp"

namespace pdlb {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using error_code = boost::system::error_code;

/// Settings of an http_server.
struct server_options {
  std::string host = "127.0.0.1";  ///< Address to bind (IPv4 or IPv6 literal, or a name).
  std::uint16_t port = 0;          ///< Port to bind; 0 picks a free one (see http_server::port()).
  unsigned threads = 1;            ///< Number of io_context threads.
  std::uint32_t header_limit = 64 * 1024;          ///< Larger request headers get 431.
  std::uint64_t body_limit = 512ull * 1024 * 1024;  ///< Larger request bodies get 413.
  /// Longest wait for a whole request header, idle time on a kept-alive connection included.
  std::chrono::milliseconds header_timeout{std::chrono::seconds(60)};
  /// Longest silence while a request body is being received.
  std::chrono::milliseconds body_idle_timeout{std::chrono::seconds(60)};
  /// Longest a single write to the client may take (a client that stops reading).
  std::chrono::milliseconds write_timeout{std::chrono::seconds(60)};
  int backlog = 4096;  ///< listen() backlog.
  std::string name = "pdlb";  ///< Used in log lines.
};

using request = http::request<http::string_body>;

/// One request and its response on a client connection, handed to the handler.
///
/// The handler answers with exactly one of respond() or begin_stream()/write_chunk()/end_stream().
/// Every write returns an error_code: a failure means the client is gone and the handler should
/// stop. If the client closes its connection while the handler runs, the handler coroutine is
/// cancelled (its pending operation completes with operation_aborted and the next one throws).
class exchange {
 public:
  virtual ~exchange() = default;

  /// The parsed request, body included.
  virtual const request& req() const = 0;
  /// Mutable access, so a handler can take the body without copying it.
  virtual request& req() = 0;
  /// The state of the server thread this connection lives on (and every handler of it runs on).
  virtual thread_context& context() = 0;
  /// Address of the client, for logs.
  virtual std::string remote() const = 0;

  /// Writes a whole response with Content-Length. `extra_headers` are preformatted
  /// "Name: value\r\n" lines.
  virtual net::awaitable<error_code> respond(http::status status, std::string_view body,
                                             std::string_view content_type = "application/json",
                                             std::string_view extra_headers = {}) = 0;
  /// Sends the headers of a streamed (chunked) response.
  virtual net::awaitable<error_code> begin_stream(
      http::status status, std::string_view content_type = "text/event-stream",
      std::string_view extra_headers = {}) = 0;
  /// Sends one piece of a streamed response, flushed at once. Empty data is a no-op.
  virtual net::awaitable<error_code> write_chunk(std::string_view data) = 0;
  /// Starts sending one piece of a streamed response without suspending: what the socket does not
  /// take at once is copied, so `data` is free again when this returns. flush() then waits until
  /// the piece is written. A failure means the client is gone. `more` continues the same piece (one
  /// chunk of both), so that two buffers need not be joined first.
  virtual error_code put_chunk(std::string_view data, std::string_view more) = 0;
  /// Waits until what put_chunk() copied is written (at once if nothing was).
  virtual net::awaitable<error_code> flush() = 0;
  /// Ends a streamed response.
  virtual net::awaitable<error_code> end_stream() = 0;
  /// Ends a streamed response abnormally: the connection is closed without the final chunk, so the
  /// client sees an incomplete body.
  virtual void abort_stream() = 0;

  /// Closes the connection without sending any response (pdlb-sim's fault injection: a worker that
  /// crashes mid-request). The handler should return right after.
  virtual void drop_connection() = 0;

  /// True once response headers were sent.
  virtual bool responded() const = 0;
  /// Asks the server to close the connection after this response.
  virtual void close_after() = 0;

  /// The status sent (0 before any response header), for metrics and the access log.
  virtual unsigned response_status() const { return 0; }
  /// When the first byte of the response body went out (for a stream, of its first chunk); the
  /// epoch when none has.
  virtual std::chrono::steady_clock::time_point first_body_byte_at() const { return {}; }
  /// Response body bytes handed to the socket (chunk framing not counted).
  virtual std::uint64_t body_bytes_sent() const { return 0; }
  /// Preformatted "Name: value\r\n" lines added to every response header of this exchange (the
  /// request id); the bytes must live until the handler returns (the server forgets them then).
  virtual void set_response_headers(std::string_view lines) { (void)lines; }
};

/// The request handler. Runs on the connection's thread.
using handler_fn = std::function<net::awaitable<void>(exchange&)>;

class http_server {
 public:
  http_server(server_options opts, handler_fn handler);
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// Binds and listens; throws std::system_error if that fails. After this, port() is known.
  void listen();
  /// The bound port.
  std::uint16_t port() const;
  /// The io_context of thread i (0 <= i < thread_count()).
  net::io_context& context(std::size_t i);
  /// The state of thread i (0 <= i < thread_count()); use it on that thread only.
  thread_context& thread_ctx(std::size_t i);
  std::size_t thread_count() const;

  /// Runs all threads (the calling one is thread 0) until the server has stopped.
  void run();

  /// New limits for requests read from now on (a reload): body size, header and body timeouts, and
  /// the write timeout. Only while no I/O thread runs a handler or a read (the service parks them).
  void set_request_limits(std::uint64_t body_limit, std::chrono::milliseconds header_timeout,
                          std::chrono::milliseconds body_idle_timeout, std::chrono::milliseconds write_timeout);

  /// Graceful shutdown, callable from any thread: stop accepting, close idle connections, let
  /// requests in flight finish for up to `grace`, then cancel the rest. `on_drained` runs (on thread
  /// 0) once no request is in flight; run() returns once everything else posted has finished.
  void shutdown(std::chrono::milliseconds grace, std::function<void()> on_drained = {});

  /// Lets run() return once pending work ends (after shutdown). Called automatically after
  /// on_drained.
  void release();

  /// Closes the listening socket so new connections are refused; open connections stay (pdlb-sim's
  /// `refuse_connections` fault: a worker whose process is gone). Callable from any thread; done
  /// before returning when called on thread 0.
  void stop_accepting();
  /// Listens again on the same port after stop_accepting(). Callable from any thread; done before
  /// returning when called on thread 0. Errors are logged (the port may have been taken meanwhile).
  void resume_accepting();

  /// Serves an already-connected stream socket as if it had been accepted, on the next thread in
  /// turn; takes ownership of `fd` (closed on error). Any connected stream socket works, one end of
  /// a socketpair included: the session fuzzer drives whole requests through it without a network.
  void serve_connection(int fd);

  /// Number of requests being handled right now (all threads).
  std::size_t in_flight() const;
  /// Number of open client connections (all threads).
  std::size_t connections() const;

 private:
  struct impl;  // defined in the .cpp file
  std::unique_ptr<impl> impl_;
};

}  // namespace pdlb
