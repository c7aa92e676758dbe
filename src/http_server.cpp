#include "pdlb/http_server.hpp"
#include "pdlb/listener.hpp"

#include "pdlb/json_escape.hpp"
#include "pdlb/lazy_deadline.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <spdlog/spdlog.h>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_set>

namespace pdlb {

using tcp = net::ip::tcp;
namespace {
constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);
}

namespace {

// One client connection, reachable from shutdown() through its thread's registry.
struct client_watch;

struct connection {
  beast::tcp_stream stream;
  bool idle = true;  // waiting for the next request, nothing in flight
  client_watch* watch = nullptr;  // the session's, which outlives the connection
  // Deadline for reading a request. Unlike beast::tcp_stream's own timeout, which closes the
  // socket, this one only cancels the read, so that a 408 can still be sent. Checked lazily (see
  // lazy_deadline): most requests arrive well within it, and arming a timer per read cost more.
  lazy_deadline read_deadline;

  explicit connection(tcp::socket s)
      : stream(std::move(s)), read_deadline(stream.get_executor(), stream.socket()) {}

  void arm_read_deadline(std::chrono::milliseconds timeout) { read_deadline.begin(timeout); }
  // Ends the deadline; true if it had expired (the read was cancelled by it).
  bool disarm_read_deadline() { return read_deadline.end(); }
};

struct thread_state {
  std::unordered_set<connection*> connections;
  std::unique_ptr<thread_context> ctx;
};

// "<hex size>\r\n" of a chunk; returns its length.
std::size_t format_chunk_size(std::size_t n, char* out) {
  static constexpr char hex[] = "0123456789abcdef";
  char tmp[16];
  std::size_t len = 0;
  do {
    tmp[len++] = hex[n & 0xf];
    n >>= 4;
  } while (n != 0);
  for (std::size_t i = 0; i < len; ++i) out[i] = tmp[len - 1 - i];
  out[len] = '\r';
  out[len + 1] = '\n';
  return len + 2;
}

bool is_http_parse_error(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_target).category();
}

void append_status_line(std::string& out, http::status status) {
  out += "HTTP/1.1 ";
  out += std::to_string(static_cast<unsigned>(status));
  out.push_back(' ');
  auto reason = http::obsolete_reason(status);
  out.append(reason.data(), reason.size());
  out += "\r\n";
}

// Watches a client connection while its handler runs, without a second coroutine: a one-byte
// peek is left pending on the socket; if it reports the close (or a reset), the watch emits a
// terminal cancellation into the session coroutine, whose slot is bound to `signal` when it is
// spawned, so the handler's pending operation completes with operation_aborted and the next one
// throws, as with any cancelled Asio coroutine. Bytes of a pipelined next request end the watch
// (they stay in the kernel for the next read; a close behind them cannot be seen).
// Shared with the pending peek's callback, which may run after the session is gone.
struct client_watch {
  net::cancellation_signal signal;
  bool active = false;        // a handler runs
  bool client_left = false;   // seen while active
  std::uint64_t generation = 0;
  char byte = 0;

  static void begin(const std::shared_ptr<client_watch>& self, tcp::socket& socket) {
    self->active = true;
    self->client_left = false;
    const auto generation = ++self->generation;
    socket.async_receive(net::buffer(&self->byte, 1), tcp::socket::message_peek,
                         [self, generation](error_code ec, std::size_t n) {
                           if (!self->active || self->generation != generation) return;
                           if (ec == net::error::operation_aborted) return;
                           if (!ec && n > 0) return;  // a pipelined request: stop watching
                           self->client_left = true;  // orderly close (eof) or an error
                           self->signal.emit(net::cancellation_type::terminal);
                         });
  }
  // Cancels the running handler, as when the client leaves (shutdown past its grace period).
  void cancel_handler() {
    if (!active || client_left) return;
    client_left = true;
    signal.emit(net::cancellation_type::terminal);
  }
  // Ends the watch after the handler returned; true if the client left meanwhile.
  static bool end(const std::shared_ptr<client_watch>& self, tcp::socket& socket) {
    self->active = false;
    ++self->generation;
    if (!self->client_left) {
      error_code ignored;
      socket.cancel(ignored);  // the pending peek, if any; its callback sees the new generation
    }
    return self->client_left;
  }
};

}  // namespace

struct http_server::impl {
  server_options opts;
  handler_fn handler;
  std::vector<std::unique_ptr<net::io_context>> contexts;
  std::vector<thread_state> threads;
  std::vector<std::optional<net::executor_work_guard<net::io_context::executor_type>>> guards;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::uint16_t bound_port = 0;
  tcp::endpoint listen_endpoint;  // what listen() bound, for resume_accepting()
  std::atomic<std::size_t> next_thread{0};
  std::atomic<std::size_t> in_flight{0};
  std::atomic<std::size_t> open_connections{0};
  std::atomic<bool> stopping{false};
  std::atomic<bool> drained_signalled{false};
  std::mutex drained_mutex;
  std::function<void()> on_drained;
  std::unique_ptr<net::steady_timer> grace_timer;

  net::awaitable<void> accept_loop();
  net::awaitable<void> run_session(tcp::socket socket, std::size_t index,
                                   std::shared_ptr<client_watch> watch);
  // Runs the handler for one request read whole; false if the connection is over.
  net::awaitable<bool> serve_request(connection& conn, request&& req, std::size_t index,
                                     const std::shared_ptr<client_watch>& watch);
  // Spawns run_session with the watch's cancellation slot bound to it.
  void spawn_session(tcp::socket socket, std::size_t index);
  void request_finished();
  void signal_drained();
  void close_connections(bool idle_only);
};

namespace {

class exchange_impl final : public exchange {
 public:
  exchange_impl(connection& conn, request&& req, thread_context& ctx, const server_options& opts)
      : conn_(conn), req_(std::move(req)), ctx_(ctx), opts_(opts) {
    keep_alive_ = req_.keep_alive();
    http10_ = req_.version() < 11;
    head_ = req_.method() == http::verb::head;
  }

  const request& req() const override { return req_; }
  request& req() override { return req_; }
  thread_context& context() override { return ctx_; }
  std::string remote() const override {
    error_code ec;
    auto ep = conn_.stream.socket().remote_endpoint(ec);
    if (ec) return "?";
    return ep.address().to_string() + ":" + std::to_string(ep.port());
  }

  net::awaitable<error_code> respond(http::status status, std::string_view body,
                                     std::string_view content_type,
                                     std::string_view extra_headers) override {
    if (responded_) co_return net::error::already_started;
    responded_ = true;
    status_ = static_cast<unsigned>(status);
    first_body_byte_at_ = std::chrono::steady_clock::now();
    body_bytes_ = head_ ? 0 : body.size();
    std::string head;
    head.reserve(160 + response_headers_.size() + extra_headers.size());
    append_status_line(head, status);
    head += "Content-Type: ";
    head.append(content_type.data(), content_type.size());
    head += "\r\nContent-Length: ";
    head += std::to_string(body.size());
    head += "\r\n";
    append_connection_header(head);
    head.append(response_headers_);
    head.append(extra_headers.data(), extra_headers.size());
    head += "\r\n";
    // A response to HEAD has the header of the response to GET, Content-Length included, and no
    // content (RFC 9110 9.3.2): a body would be read as the start of the next response.
    std::array<net::const_buffer, 2> bufs{net::buffer(head), net::buffer(body.data(), head_ ? 0 : body.size())};
    co_return co_await send(bufs);
  }

  net::awaitable<error_code> begin_stream(http::status status, std::string_view content_type,
                                          std::string_view extra_headers) override {
    if (responded_) co_return net::error::already_started;
    responded_ = true;
    streaming_ = true;
    status_ = static_cast<unsigned>(status);
    std::string head;
    head.reserve(160 + response_headers_.size() + extra_headers.size());
    append_status_line(head, status);
    head += "Content-Type: ";
    head.append(content_type.data(), content_type.size());
    head += "\r\nCache-Control: no-cache\r\n";
    if (http10_) {
      // HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
      keep_alive_ = false;
    } else {
      head += "Transfer-Encoding: chunked\r\n";
    }
    append_connection_header(head);
    head.append(response_headers_);
    head.append(extra_headers.data(), extra_headers.size());
    head += "\r\n";
    if (head_) stream_ended_ = true;  // no content for HEAD: write_chunk/end_stream write nothing
    co_return co_await send(std::array<net::const_buffer, 1>{net::buffer(head)});
  }

  net::awaitable<error_code> write_chunk(std::string_view data) override {
    if (auto ec = put_chunk(data, {})) co_return ec;
    co_return co_await flush();
  }

  error_code put_chunk(std::string_view data, std::string_view more) override {
    if (head_ && streaming_) return error_code{};
    if (!streaming_ || stream_ended_) return net::error::operation_not_supported;
    const std::size_t size = data.size() + more.size();
    if (size == 0) return error_code{};
    if (body_bytes_ == 0) first_body_byte_at_ = std::chrono::steady_clock::now();
    body_bytes_ += size;
    if (http10_)
      return put(std::array<net::const_buffer, 2>{net::buffer(data.data(), data.size()),
                                                  net::buffer(more.data(), more.size())});
    char size_line[20];
    std::size_t len = format_chunk_size(size, size_line);
    std::array<net::const_buffer, 4> bufs{net::buffer(size_line, len), net::buffer(data.data(), data.size()),
                                          net::buffer(more.data(), more.size()), net::buffer("\r\n", 2)};
    return put(bufs);
  }

  net::awaitable<error_code> flush() override {
    if (pending_.empty()) co_return error_code{};
    conn_.stream.expires_after(opts_.write_timeout);
    auto [wec, n] = co_await net::async_write(conn_.stream, net::buffer(pending_), tuple_awaitable);
    pending_.clear();
    if (pending_.capacity() > 64 * 1024) std::string().swap(pending_);
    if (wec) keep_alive_ = false;
    co_return wec;
  }

  net::awaitable<error_code> end_stream() override {
    if (head_ && streaming_) co_return error_code{};
    if (!streaming_ || stream_ended_) co_return net::error::operation_not_supported;
    stream_ended_ = true;
    if (http10_) co_return error_code{};
    co_return co_await send(std::array<net::const_buffer, 1>{net::buffer("0\r\n\r\n", 5)});
  }

  void abort_stream() override {
    keep_alive_ = false;
    stream_ended_ = true;
  }

  void drop_connection() override {
    // Counting as responded stops the session from writing its own 500; without keep-alive the
    // session then closes the socket.
    responded_ = true;
    keep_alive_ = false;
  }

  bool responded() const override { return responded_; }
  void close_after() override { keep_alive_ = false; }
  unsigned response_status() const override { return status_; }
  std::chrono::steady_clock::time_point first_body_byte_at() const override { return first_body_byte_at_; }
  std::uint64_t body_bytes_sent() const override { return body_bytes_; }
  void set_response_headers(std::string_view lines) override { response_headers_ = lines; }

  bool keep_alive() const { return keep_alive_ && (!streaming_ || stream_ended_); }
  bool stream_unfinished() const { return streaming_ && !stream_ended_; }

 private:
  void append_connection_header(std::string& head) const {
    if (!keep_alive_) {
      head += "Connection: close\r\n";
    } else if (http10_) {
      head += "Connection: keep-alive\r\n";
    }
  }

  // Writes `bufs` to the client. Most writes fit the socket's buffer and are done at once, with no
  // timer and no copy; what does not fit is copied before the coroutine suspends, so the caller's
  // bytes (the relay's per-thread buffer, say) are free again as soon as this is called.
  template <class Buffers>
  net::awaitable<error_code> send(const Buffers& bufs) {
    if (auto ec = put(bufs)) co_return ec;
    co_return co_await flush();
  }

  // The part of send() that never suspends: writes what the socket takes at once and copies the
  // rest into pending_ for flush().
  template <class Buffers>
  error_code put(const Buffers& bufs) {
    const std::size_t total = net::buffer_size(bufs);
    if (!pending_.empty()) {
      // An earlier piece still waits for flush(): queue behind it, keeping the order.
      const std::size_t old = pending_.size();
      pending_.resize(old + total);
      net::buffer_copy(net::buffer(pending_.data() + old, total), bufs);
      return error_code{};
    }
    auto& socket = conn_.stream.socket();
    error_code ec;
    std::size_t sent = socket.write_some(bufs, ec);
    if (!ec && sent == total) return error_code{};
    if (ec == net::error::would_block || ec == net::error::try_again) {
      ec = {};
      sent = 0;
    }
    if (ec) {
      keep_alive_ = false;
      return ec;
    }
    pending_.resize(total - sent);
    beast::buffers_suffix<Buffers> rest(bufs);
    rest.consume(sent);
    net::buffer_copy(net::buffer(pending_), rest);
    return error_code{};
  }

  connection& conn_;
  std::string pending_;  // bytes that did not fit the socket buffer at once
  request req_;
  thread_context& ctx_;
  const server_options& opts_;
  bool keep_alive_ = true;
  bool http10_ = false;
  bool head_ = false;  // the request is HEAD: headers only
  bool responded_ = false;
  bool streaming_ = false;
  bool stream_ended_ = false;
  unsigned status_ = 0;
  std::chrono::steady_clock::time_point first_body_byte_at_{};
  std::uint64_t body_bytes_ = 0;
  std::string_view response_headers_;  // the handler's, set_response_headers
};

// Writes an error response produced by the server itself, then the connection is closed.
// `head_request`: the request (its header was parsed) is HEAD, so the answer has no content.
net::awaitable<void> write_server_error(connection& conn, const server_options& opts,
                                        http::status status, std::string_view message,
                                        bool head_request = false) {
  std::string body = json_error_body(message);
  std::string head;
  append_status_line(head, status);
  head += "Content-Type: application/json\r\nContent-Length: ";
  head += std::to_string(body.size());
  head += "\r\nConnection: close\r\n\r\n";
  std::array<net::const_buffer, 2> bufs{net::buffer(head), net::buffer(body.data(), head_request ? 0 : body.size())};
  conn.stream.expires_after(opts.write_timeout);
  co_await net::async_write(conn.stream, bufs, tuple_awaitable);
}

net::awaitable<void> run_guarded(const handler_fn& handler, exchange_impl& ex) {
  try {
    co_await handler(ex);
  } catch (const boost::system::system_error& e) {
    if (e.code() != net::error::operation_aborted)
      spdlog::error("handler failed on {} {}: {}", std::string(ex.req().method_string()),
                    std::string(ex.req().target()), e.what());
  } catch (const std::exception& e) {
    spdlog::error("handler failed on {} {}: {}", std::string(ex.req().method_string()),
                  std::string(ex.req().target()), e.what());
  }
}

void log_session_exception(const std::string& name, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("{}: session ended by exception: {}", name, ex.what());
  }
}

bool is_resource_exhaustion(const error_code& ec) {
  return ec == net::error::no_descriptors || ec == net::error::no_buffer_space ||
         ec == net::error::no_memory || ec.value() == ENFILE;
}

}  // namespace

void http_server::impl::spawn_session(tcp::socket socket, std::size_t index) {
  auto watch = std::make_shared<client_watch>();
  auto slot = watch->signal.slot();
  net::co_spawn(*contexts[index], run_session(std::move(socket), index, watch),
                net::bind_cancellation_slot(
                    slot, [name = opts.name, watch](std::exception_ptr e) { log_session_exception(name, e); }));
}

net::awaitable<void> http_server::impl::accept_loop() {
  net::steady_timer backoff(acceptor->get_executor());
  auto last_warning = std::chrono::steady_clock::time_point{};
  for (;;) {
    std::size_t index = next_thread.fetch_add(1, std::memory_order_relaxed) % contexts.size();
    auto [ec, socket] =
        co_await acceptor->async_accept(contexts[index]->get_executor(), tuple_awaitable);
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor->is_open() || stopping) co_return;
      if (is_resource_exhaustion(ec)) {
        // Out of file descriptors: pending connections stay in the backlog; try again shortly,
        // as nginx does, rather than spinning on accept().
        auto now = std::chrono::steady_clock::now();
        if (now - last_warning > std::chrono::seconds(5)) {
          spdlog::warn("{}: accept failed ({}); backing off", opts.name, ec.message());
          last_warning = now;
        }
        backoff.expires_after(std::chrono::milliseconds(50));
        co_await backoff.async_wait(tuple_awaitable);
      }
      continue;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    spawn_session(std::move(socket), index);
  }
}

void http_server::impl::signal_drained() {
  if (drained_signalled.exchange(true)) return;
  net::post(*contexts[0], [this] {
    if (grace_timer) grace_timer->cancel();
    std::function<void()> cb;
    {
      std::lock_guard lock(drained_mutex);
      cb = std::move(on_drained);
    }
    if (cb) cb();
  });
}

void http_server::impl::request_finished() {
  if (in_flight.fetch_sub(1, std::memory_order_acq_rel) == 1 && stopping) signal_drained();
}

void http_server::impl::close_connections(bool idle_only) {
  for (std::size_t i = 0; i < contexts.size(); ++i) {
    net::post(*contexts[i], [this, i, idle_only] {
      for (connection* c : threads[i].connections) {
        if (!idle_only || c->idle) {
          // A handler waiting on something else than the client (a worker, a timer) would not
          // notice the closed socket until its next write: cancel it as if the client had left.
          if (!c->idle && c->watch) c->watch->cancel_handler();
          error_code ignored;
          c->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
          c->stream.socket().close(ignored);
        }
      }
    });
  }
}

namespace {

using request_parser = http::request_parser<http::string_body>;

// Reads a request header into `parser`, at most the header timeout; the error (if any) for
// answer_header_error. The happy path of every request: kept out of a coroutine of its own, whose
// frame would cost more than the read's own bookkeeping (callgrind, small requests).
auto async_read_request_header(connection& conn, const server_options& opts, beast::flat_buffer& buffer,
                               request_parser& parser) {
  conn.idle = true;
  conn.stream.expires_never();
  conn.arm_read_deadline(opts.header_timeout);
  return http::async_read_header(conn.stream, buffer, parser, tuple_awaitable);
}

// The error that ended a header read (`ec`, `n` bytes consumed), after the read's deadline is off.
error_code header_read_error(connection& conn, const server_options& opts, error_code ec, std::size_t n) {
  if (conn.disarm_read_deadline() && ec == net::error::operation_aborted) ec = beast::error::timeout;
  conn.idle = false;
  // Beast 1.81 applies the header limit to the request line and to the fields separately (each
  // put() checks only what it has not consumed yet), so a header of up to twice the limit gets
  // through; `n` is everything the parser consumed, i.e. the whole header.
  if (!ec && n > opts.header_limit) ec = http::error::header_limit;
  return ec;
}

// Answers the client's own mistakes in a request header (431, 413, 408, 400); the connection is
// over. An idle keep-alive connection that timed out or closed gets no answer.
net::awaitable<void> answer_header_error(connection& conn, const server_options& opts, const beast::flat_buffer& buffer,
                                         request_parser& parser, error_code ec) {
  if (ec == http::error::header_limit) {
    co_await write_server_error(conn, opts, http::status::request_header_fields_too_large,
                                "request header too large");
  } else if (ec == http::error::body_limit) {
    co_await write_server_error(conn, opts, http::status::payload_too_large,
                                "request body too large (limit " + std::to_string(opts.body_limit) + " bytes)",
                                parser.is_header_done() && parser.get().method() == http::verb::head);
  } else if (ec == beast::error::timeout) {
    if (buffer.size() > 0)
      co_await write_server_error(conn, opts, http::status::request_timeout, "timed out reading the request header");
  } else if (ec != http::error::end_of_stream && ec != net::error::eof && ec != net::error::operation_aborted &&
             ec != net::error::connection_reset && ec != net::error::bad_descriptor && is_http_parse_error(ec)) {
    co_await write_server_error(conn, opts, http::status::bad_request, "malformed HTTP request: " + ec.message());
  }
}

// Answers `Expect: 100-continue` (417 for any other expectation) of a request that has the field;
// false if the connection is over.
net::awaitable<bool> answer_expect(connection& conn, const server_options& opts, request_parser& parser) {
  auto& head = parser.get();
  auto expect = head[http::field::expect];
  if (!beast::iequals(expect, "100-continue")) {
    co_await write_server_error(conn, opts, http::status::expectation_failed, "unsupported Expect header",
                                head.method() == http::verb::head);
    co_return false;
  }
  if (parser.is_done()) co_return true;
  conn.stream.expires_after(opts.write_timeout);
  auto [wec, wn] = co_await net::async_write(conn.stream, net::buffer("HTTP/1.1 100 Continue\r\n\r\n", 25),
                                             tuple_awaitable);
  co_return !wec;
}

// Parses the body bytes that came with the header (for most requests, the whole body). Beast's
// async_read_some would parse them too, but completes through a post even when it needs no read:
// a round trip through the scheduler per request (callgrind, small requests). need_more is not an
// error here: the rest is read by read_request_body.
error_code parse_buffered_body(beast::flat_buffer& buffer, request_parser& parser) {
  while (!parser.is_done() && buffer.size() > 0) {
    error_code ec;
    const std::size_t used = parser.put(buffer.data(), ec);
    buffer.consume(used);
    if (ec == http::error::need_more) return {};
    if (ec) return ec;
    if (used == 0) break;
  }
  return {};
}

// Reads the rest of the request body, or answers the parse error `ec` that parse_buffered_body
// met; false if the connection is over, after answering 413, 408 or 400.
net::awaitable<bool> read_request_body(connection& conn, const server_options& opts, beast::flat_buffer& buffer,
                                       request_parser& parser, error_code ec) {
  const bool head_request = parser.get().method() == http::verb::head;
  // Beast reads at most what the buffer can hold (512 bytes at first): make room for the body so
  // that it comes in a few large reads, not a hundred small ones. Given back after the request.
  if (auto length = parser.content_length(); length && !parser.is_done()) {
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(*length, 1 << 20)) + buffer.size();
    if (buffer.capacity() < want) buffer.reserve(want);
  }
  while (!ec && !parser.is_done()) {
    conn.arm_read_deadline(opts.body_idle_timeout);
    auto [rec, rn] = co_await http::async_read_some(conn.stream, buffer, parser, tuple_awaitable);
    if (conn.disarm_read_deadline() && rec == net::error::operation_aborted) rec = beast::error::timeout;
    ec = rec;
  }
  if (!ec) co_return true;
  if (ec == http::error::body_limit) {
    co_await write_server_error(conn, opts, http::status::payload_too_large,
                                "request body too large (limit " + std::to_string(opts.body_limit) + " bytes)",
                                head_request);
  } else if (ec == beast::error::timeout) {
    co_await write_server_error(conn, opts, http::status::request_timeout, "timed out reading the request body",
                                head_request);
  } else if (is_http_parse_error(ec) && ec != http::error::partial_message && ec != http::error::end_of_stream) {
    co_await write_server_error(conn, opts, http::status::bad_request,
                                "malformed HTTP request body: " + ec.message(), head_request);
  }
  co_return false;
}

}  // namespace

net::awaitable<bool> http_server::impl::serve_request(connection& conn, request&& req, std::size_t index,
                                                     const std::shared_ptr<client_watch>& watch) {
  exchange_impl ex(conn, std::move(req), *threads[index].ctx, opts);
  client_watch::begin(watch, conn.stream.socket());
  co_await run_guarded(handler, ex);
  if (client_watch::end(watch, conn.stream.socket())) {
    // The client went away: the handler was cancelled; nothing more can be written.
    co_await net::this_coro::reset_cancellation_state();
    co_return false;
  }
  ex.set_response_headers({});  // the handler's bytes ended with it
  if (!ex.responded()) {
    exchange& base = ex;
    if (co_await base.respond(http::status::internal_server_error, json_error_body("internal error")))
      co_return false;
  }
  co_return !ex.stream_unfinished() && ex.keep_alive();
}

net::awaitable<void> http_server::impl::run_session(tcp::socket socket, std::size_t index,
                                                    std::shared_ptr<client_watch> watch) {
  connection conn(std::move(socket));
  conn.watch = watch.get();
  {
    // Writes are tried at once and only then awaited (exchange_impl::put), which needs a
    // non-blocking socket; Asio's asynchronous operations are not affected by the flag.
    error_code ignored;
    conn.stream.socket().non_blocking(true, ignored);
  }
  auto& registry = threads[index].connections;
  registry.insert(&conn);
  open_connections.fetch_add(1, std::memory_order_relaxed);
  struct unregister {
    impl* self;
    std::unordered_set<connection*>& registry;
    connection* conn;
    ~unregister() {
      registry.erase(conn);
      self->open_connections.fetch_sub(1, std::memory_order_relaxed);
    }
  } guard{this, registry, &conn};

  beast::flat_buffer buffer;
  while (!stopping) {
    request_parser parser;
    parser.header_limit(opts.header_limit);
    parser.body_limit(opts.body_limit);
    auto [rec, n] = co_await async_read_request_header(conn, opts, buffer, parser);
    if (auto ec = header_read_error(conn, opts, rec, n)) {
      co_await answer_header_error(conn, opts, buffer, parser, ec);
      break;
    }
    // In flight from its header on: a drain waits for a request whose body is still arriving.
    in_flight.fetch_add(1, std::memory_order_acq_rel);
    struct finish {
      impl* self;
      ~finish() { self->request_finished(); }
    } finished{this};
    // The two steps most requests skip are only entered when needed (each is a coroutine frame).
    if (parser.get().count(http::field::expect) && !co_await answer_expect(conn, opts, parser)) break;
    if (!parser.is_done()) {
      const error_code bec = parse_buffered_body(buffer, parser);
      if ((bec || !parser.is_done()) && !co_await read_request_body(conn, opts, buffer, parser, bec)) break;
    }
    conn.stream.expires_never();  // the handler's writes set their own deadlines
    if (buffer.size() == 0 && buffer.capacity() > 4096) buffer.shrink_to_fit();  // after a large body
    if (!co_await serve_request(conn, parser.release(), index, watch)) break;
  }
  error_code ignored;
  conn.stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  conn.stream.socket().close(ignored);
}

http_server::http_server(server_options opts, handler_fn handler) : impl_(std::make_unique<impl>()) {
  impl_->opts = std::move(opts);
  impl_->handler = std::move(handler);
  unsigned n = std::max(1u, impl_->opts.threads);
  impl_->threads.resize(n);
  for (unsigned i = 0; i < n; ++i) impl_->threads[i].ctx = std::make_unique<thread_context>(i);
  for (unsigned i = 0; i < n; ++i) {
    impl_->contexts.push_back(std::make_unique<net::io_context>(1));
    impl_->guards.emplace_back(net::make_work_guard(*impl_->contexts.back()));
  }
}

http_server::~http_server() = default;

void http_server::listen() {
  auto& ioc = *impl_->contexts[0];
  auto acc = open_listener(ioc, impl_->opts.host, impl_->opts.port, impl_->opts.backlog);
  impl_->listen_endpoint = acc->local_endpoint();  // the port the kernel picked, if asked to
  impl_->bound_port = impl_->listen_endpoint.port();
  impl_->acceptor = std::move(acc);
  net::co_spawn(ioc, impl_->accept_loop(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::critical("accept loop ended by exception: {}", ex.what());
    }
  });
}

std::uint16_t http_server::port() const { return impl_->bound_port; }

net::io_context& http_server::context(std::size_t i) { return *impl_->contexts.at(i); }

thread_context& http_server::thread_ctx(std::size_t i) { return *impl_->threads.at(i).ctx; }

std::size_t http_server::thread_count() const { return impl_->contexts.size(); }

void http_server::set_request_limits(std::uint64_t body_limit, std::chrono::milliseconds header_timeout,
                                     std::chrono::milliseconds body_idle_timeout,
                                     std::chrono::milliseconds write_timeout) {
  impl_->opts.body_limit = body_limit;
  impl_->opts.header_timeout = header_timeout;
  impl_->opts.body_idle_timeout = body_idle_timeout;
  impl_->opts.write_timeout = write_timeout;
}

void http_server::run() {
  std::vector<std::thread> workers;
  for (std::size_t i = 1; i < impl_->contexts.size(); ++i)
    workers.emplace_back([this, i] { impl_->contexts[i]->run(); });
  impl_->contexts[0]->run();
  for (auto& t : workers) t.join();
}

void http_server::shutdown(std::chrono::milliseconds grace, std::function<void()> on_drained) {
  {
    std::lock_guard lock(impl_->drained_mutex);
    impl_->on_drained = std::move(on_drained);
  }
  if (impl_->stopping.exchange(true)) return;
  net::post(*impl_->contexts[0], [this, grace] {
    error_code ignored;
    if (impl_->acceptor) impl_->acceptor->close(ignored);
    impl_->grace_timer = std::make_unique<net::steady_timer>(*impl_->contexts[0], grace);
    impl_->grace_timer->async_wait([this](error_code ec) {
      if (ec) return;  // drained in time
      spdlog::warn("{}: grace period over, closing {} connection(s) with requests in flight",
                   impl_->opts.name, impl_->open_connections.load());
      impl_->close_connections(false);
    });
    if (impl_->in_flight.load() == 0) impl_->signal_drained();
  });
  impl_->close_connections(true);
}

void http_server::release() {
  for (std::size_t i = 0; i < impl_->contexts.size(); ++i)
    net::post(*impl_->contexts[i], [this, i] { impl_->guards[i].reset(); });
}

void http_server::serve_connection(int fd) {
  std::size_t index = impl_->next_thread.fetch_add(1, std::memory_order_relaxed) % impl_->contexts.size();
  auto& ioc = *impl_->contexts[index];
  net::post(ioc, [this, fd, index, &ioc] {
    tcp::socket socket(ioc);
    error_code ec;
    socket.assign(tcp::v4(), fd, ec);  // the protocol object is not checked against the fd
    if (ec) {
      ::close(fd);
      spdlog::error("{}: cannot serve fd {}: {}", impl_->opts.name, fd, ec.message());
      return;
    }
    socket.set_option(tcp::no_delay(true), ec);  // fails harmlessly on a non-TCP socket
    impl_->spawn_session(std::move(socket), index);
  });
}

void http_server::stop_accepting() {
  // dispatch: when called on thread 0 the listener is closed before this returns.
  net::dispatch(*impl_->contexts[0], [this] {
    if (!impl_->acceptor || !impl_->acceptor->is_open()) return;
    error_code ignored;
    impl_->acceptor->close(ignored);
  });
}

void http_server::resume_accepting() {
  net::dispatch(*impl_->contexts[0], [this] {
    if (impl_->stopping || !impl_->acceptor || impl_->acceptor->is_open()) return;
    // The same acceptor object is reused: the old accept loop may still hold a completion for it
    // (operation_aborted), so it must not be destroyed here.
    auto& acc = *impl_->acceptor;
    tcp::endpoint ep = impl_->listen_endpoint;
    error_code ec;
    acc.open(ep.protocol(), ec);
    if (!ec) acc.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec && ep.address().is_v6()) {
      error_code ignored;
      acc.set_option(net::ip::v6_only(false), ignored);
    }
    if (!ec) acc.bind(ep, ec);
    if (!ec) acc.listen(impl_->opts.backlog, ec);
    if (ec) {
      spdlog::error("{}: cannot listen again on port {}: {}", impl_->opts.name, ep.port(),
                    ec.message());
      error_code ignored;
      acc.close(ignored);
      return;
    }
    net::co_spawn(*impl_->contexts[0], impl_->accept_loop(), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::critical("accept loop ended by exception: {}", ex.what());
      }
    });
  });
}

std::size_t http_server::in_flight() const { return impl_->in_flight.load(); }

std::size_t http_server::connections() const { return impl_->open_connections.load(); }

}  // namespace pdlb
