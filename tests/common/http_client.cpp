#include "common/http_client.hpp"

#include "pdlb/http_client.hpp"
#include "pdlb/sse.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <cctype>
#include <stdexcept>

namespace pdlb::test {

namespace net = boost::asio;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);
// Bytes read at a time; a header larger than Beast's default limit (8 KB) fails before the buffer
// would have to grow.
constexpr std::size_t read_size = 64 * 1024;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// What the client keeps of a response: the head for http_response, and the body bytes parsed since
// read_body_some last took them.
struct response_copy {
  http_response head;
  std::string body;

  void on_status(unsigned status) { head.status = status; }
  void on_field(http::field, std::string_view name, std::string_view value) {
    head.headers[lower(name)] = std::string(value);
  }
  std::size_t on_body(std::string_view bytes) {
    body.append(bytes);
    return bytes.size();
  }
};

}  // namespace

// Every operation runs on the connection's own io_context until it ends, watched by a timer that
// cancels the socket's operations once nothing has moved for the timeout: a test never hangs, and a
// slow stream that keeps sending is not cut.
struct http_connection::impl {
  explicit impl(std::chrono::milliseconds t) : timeout(t) {}

  net::io_context ioc;
  http1::client_connection conn{ioc.get_executor(), read_size, 2 * read_size};
  std::chrono::milliseconds timeout;
  std::optional<http1::response_reader<response_copy>> reader;  // the response being read
  bool body_failed = false;  // the body read failed: read_body_some has nothing more
  clock_type::time_point last_activity;
  bool running = false;
  bool timed_out = false;

  tcp::socket& socket() { return conn.stream.socket(); }
  void touch() { last_activity = clock_type::now(); }

  // Runs `op`; a cut operation's error becomes timed_out.
  error_code run(net::awaitable<error_code> op, std::chrono::milliseconds limit) {
    net::steady_timer timer(ioc);
    running = true;
    timed_out = false;
    touch();
    net::co_spawn(ioc, watch(timer, limit), net::detached);
    error_code result;
    std::exception_ptr failure;
    net::co_spawn(ioc, std::move(op), [&](std::exception_ptr e, error_code ec) {
      failure = e;
      result = ec;
      running = false;
      timer.cancel();
    });
    ioc.restart();
    ioc.run();
    if (failure) std::rethrow_exception(failure);
    if (timed_out && result == net::error::operation_aborted) return net::error::timed_out;
    return result;
  }

  net::awaitable<void> watch(net::steady_timer& timer, std::chrono::milliseconds limit) {
    for (;;) {
      timer.expires_at(last_activity + limit);
      auto [ec] = co_await timer.async_wait(tuple_awaitable);
      if (ec || !running) co_return;
      if (clock_type::now() - last_activity >= limit) {
        timed_out = true;
        error_code ignored;
        socket().cancel(ignored);
        co_return;
      }
    }
  }

  // Reads the response until `until()` (see http1::read_response).
  template <class Until>
  error_code read(Until until) {
    return run(http1::read_response(conn, *reader, until, [this] { touch(); }), timeout);
  }
};

namespace {

net::awaitable<error_code> write_all(tcp::socket& socket, std::string_view bytes) {
  auto [ec, n] =
      co_await net::async_write(socket, net::buffer(bytes.data(), bytes.size()), tuple_awaitable);
  co_return ec;
}

// Appends what the connection gives to `out` until it fails (EOF included); `touch` after each
// read.
template <class Touch>
net::awaitable<error_code> read_to_end(http1::client_connection& conn, std::string& out,
                                       Touch touch) {
  while (!conn.read_closed) {
    const std::size_t old = out.size();
    out.resize(old + read_size);
    auto [ec, n] = co_await conn.stream.socket().async_read_some(
        net::buffer(out.data() + old, read_size), tuple_awaitable);
    out.resize(old + n);
    touch();
    conn.read_closed = http1::closed_by_peer(ec);
    if (ec) co_return ec;
  }
  co_return net::error::eof;
}

net::awaitable<error_code> read_one_byte(http1::client_connection& conn) {
  if (conn.read_closed) co_return net::error::eof;
  char c;
  auto [ec, n] = co_await conn.stream.socket().async_read_some(net::buffer(&c, 1), tuple_awaitable);
  conn.read_closed = http1::closed_by_peer(ec);
  co_return ec;
}

}  // namespace

http_connection::http_connection(std::uint16_t port, std::string host,
                                 std::chrono::milliseconds timeout)
    : impl_(std::make_unique<impl>(timeout)) {
  const std::vector<tcp::endpoint> endpoints{tcp::endpoint(net::ip::make_address(host), port)};
  if (auto ec = impl_->run(http1::connect(impl_->conn, endpoints, timeout), timeout))
    throw boost::system::system_error(ec, "connect");
}

http_connection::~http_connection() = default;

void http_connection::send(const std::string& method, const std::string& target,
                           const std::string& body, const header_list& headers) {
  std::string fields;
  bool has_te = false, has_ct = false, has_cl = false;
  for (auto& [k, v] : headers) {
    auto lk = lower(k);
    has_te |= lk == "transfer-encoding";
    has_ct |= lk == "content-type";
    has_cl |= lk == "content-length";
    fields += k + ": " + v + "\r\n";
  }
  std::string req;
  http1::append_request_head(
      req, {.method = method,
            .target = target,
            .host = "127.0.0.1",
            .fields = fields,
            .content_type = !has_ct && !body.empty() ? "application/json" : "",
            .content_length = !has_te && !has_cl && (!body.empty() || method == "POST")
                                  ? std::optional(body.size())
                                  : std::nullopt});
  req += body;
  send_raw(req);
}

void http_connection::send_raw(const std::string& bytes) {
  if (auto ec = impl_->run(write_all(impl_->socket(), bytes), impl_->timeout))
    throw boost::system::system_error(ec, "write");
}

http_response http_connection::read_response() {
  http_response out = read_header();
  if (!out.error.empty()) return out;
  for (;;) {
    auto piece = read_body_some();
    if (!piece) break;
    out.body += *piece;
  }
  if (!impl_->reader) return out;
  out.complete = impl_->reader->is_done();
  impl_->reader.reset();
  return out;
}

http_response http_connection::read_header() {
  auto& i = *impl_;
  i.reader.emplace();
  i.reader->body_limit(boost::none);
  i.body_failed = false;
  auto& reader = *i.reader;
  if (auto ec = i.read([&] { return reader.is_header_done(); })) {
    i.reader.reset();
    http_response out;
    out.error = ec.message();
    return out;
  }
  return reader.receiver().head;
}

std::optional<std::string> http_connection::read_body_some() {
  auto& i = *impl_;
  if (!i.reader || i.reader->is_done() || i.body_failed) return std::nullopt;
  auto& reader = *i.reader;
  auto& piece = reader.receiver().body;
  reader.eager(true);  // all the body bytes buffered at once
  const error_code ec = i.read([&] { return reader.is_done() || !piece.empty(); });
  i.body_failed = static_cast<bool>(ec);
  if (piece.empty()) return std::nullopt;
  return std::exchange(piece, {});
}

std::string http_connection::read_until_close() {
  auto& i = *impl_;
  std::string out(i.conn.buffered());
  i.conn.consume(i.conn.used);
  i.run(read_to_end(i.conn, out, [&i] { i.touch(); }), i.timeout);
  return out;
}

bool http_connection::peer_closed(std::chrono::milliseconds wait) {
  const error_code ec = impl_->run(read_one_byte(impl_->conn), wait);
  return ec == net::error::eof || ec == net::error::connection_reset;
}

void http_connection::close() {
  error_code ec;
  impl_->socket().shutdown(tcp::socket::shutdown_both, ec);
  impl_->socket().close(ec);
}

void http_connection::reset() {
  error_code ec;
  impl_->socket().set_option(net::socket_base::linger(true, 0), ec);
  impl_->socket().close(ec);
}

http_response http_request(std::uint16_t port, const std::string& method, const std::string& target,
                           const std::string& body, const header_list& headers,
                           std::chrono::milliseconds timeout) {
  try {
    http_connection c(port, "127.0.0.1", timeout);
    return c.request(method, target, body, headers);
  } catch (const std::exception& e) {
    http_response r;
    r.error = e.what();
    return r;
  }
}

std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  sse_splitter splitter;
  splitter.feed(body);
  while (auto event = splitter.next_event()) {
    if (auto data = event_data(*event)) out.push_back(std::move(*data));
  }
  // An event cut by the end of the body counts too (a test looks at what came).
  if (auto data = event_data(splitter.pending())) out.push_back(std::move(*data));
  return out;
}

}  // namespace pdlb::test
