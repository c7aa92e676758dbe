// The pieces of an HTTP/1.1 client that pdlb's upstream calls, pdlb-bench and the tests' client
// share.
//
// - append_request_head writes a request head, with only the fields its caller asks for.
// - response_reader is Beast's parser with its callbacks sent to a receiver, a plain class that the
//   caller writes: no header field or body byte is stored unless the receiver keeps it, and its
//   calls are resolved at compile time (the reader is final, the receiver a template argument).
// - client_connection and read_response are a read loop over a bounded buffer, for callers whose
//   connections keep their buffer between reads (the bench, the tests). pdlb's upstream calls read
//   into per-thread scratch buffers instead and keep their own loop (see upstream.cpp).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace pdlb::http1 {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using error_code = boost::system::error_code;

// ---------------------------------------------------------------------------------------------
// Request heads

/// What append_request_head writes, in this order:
///
///     <method> <target_prefix><target> HTTP/1.1
///     Host: <host>[:<port>]
///     <fields><extra_fields>
///     Content-Type: <content_type>        (if not empty)
///     Content-Length: <content_length>    (if set)
///     <blank line>
///
/// Designated initializers name what a caller uses: `{.method = "GET", .target = "/health", ...}`.
struct request_head {
  std::string_view method = {};
  std::string_view target_prefix = {};  ///< Written before `target` (a worker URL's base path).
  std::string_view target = {};
  std::string_view host = {};    ///< Host's value as given, or its host part if `port` is set.
  std::string_view port = {};    ///< If not empty, Host is host:port, an IPv6 address in brackets.
  std::string_view fields = {};  ///< Complete header lines, each ending in CRLF.
  std::string_view extra_fields = {};  ///< More of them, after `fields` (a caller's own, say).
  std::string_view content_type = {};
  std::optional<std::size_t> content_length = {};
};

/// Appends the request head `h` to `out` (one reservation, no other allocation).
void append_request_head(std::string& out, const request_head& h);

// ---------------------------------------------------------------------------------------------
// Responses

/// A response parser that hands what it parses to a `Receiver`, held by value:
///
///     void on_status(unsigned status);                          // required
///     std::size_t on_body(std::string_view bytes);              // required: bytes taken
///     void on_field(http::field, std::string_view name, std::string_view value);  // optional
///     void on_header();                                         // optional: the header ended
///
/// Body bytes come de-chunked. A receiver that takes fewer bytes than it is given (its buffer is
/// full) makes put() stop with http::error::need_buffer; the rest is offered again by the next
/// put().
template <class Receiver>
class response_reader final : public http::basic_parser<false> {
 public:
  template <class... Args>
  explicit response_reader(Args&&... args) : receiver_(std::forward<Args>(args)...) {}

  Receiver& receiver() { return receiver_; }
  const Receiver& receiver() const { return receiver_; }

 private:
  void on_request_impl(http::verb, beast::string_view, beast::string_view, int,
                       error_code&) override {}
  void on_response_impl(int code, beast::string_view, int, error_code&) override {
    receiver_.on_status(static_cast<unsigned>(code));
  }
  void on_field_impl(http::field name, beast::string_view name_text, beast::string_view value,
                     error_code&) override {
    if constexpr (requires(Receiver & r) {
                    r.on_field(name, std::string_view(), std::string_view());
                  })
      receiver_.on_field(name, std::string_view(name_text.data(), name_text.size()),
                         std::string_view(value.data(), value.size()));
  }
  void on_header_impl(error_code&) override {
    if constexpr (requires(Receiver & r) { r.on_header(); }) receiver_.on_header();
  }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(beast::string_view body, error_code& ec) override {
    return take(body, ec);
  }
  void on_chunk_header_impl(std::uint64_t, beast::string_view, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) override {
    return take(body, ec);
  }
  void on_finish_impl(error_code&) override {}

  std::size_t take(beast::string_view body, error_code& ec) {
    const std::size_t n = receiver_.on_body(std::string_view(body.data(), body.size()));
    if (n < body.size()) ec = http::error::need_buffer;
    return n;
  }

  Receiver receiver_;
};

// ---------------------------------------------------------------------------------------------
// Connections

/// Errors of read_response beyond Beast's and the socket's.
enum class client_errc {
  stale_connection = 1,   ///< A reused connection was closed before any byte of the response came.
  header_too_long,        ///< The header did not fit the connection's buffer limit.
  chunk_header_too_long,  ///< Nor did a chunk header.
};
const boost::system::error_category& client_category();
error_code make_error_code(client_errc e);

}  // namespace pdlb::http1

template <>
struct boost::system::is_error_code_enum<pdlb::http1::client_errc> : std::true_type {};

namespace pdlb::http1 {

/// A client connection: its socket, and the received bytes not yet parsed.
struct client_connection {
  /// A buffer of `buffer_size` bytes, grown (doubled) up to `buffer_limit` only for a header or
  /// chunk header that does not fit: thousands of idle connections do not each keep a large one.
  client_connection(const net::any_io_executor& ex, std::size_t buffer_size,
                    std::size_t buffer_limit);

  /// Its timer serves connect() only; reads and writes go to the socket, timed by the caller.
  beast::tcp_stream stream;

  /// Received bytes not yet parsed: [data(), data() + used). Not zero-filled (only what is read is
  /// touched).
  char* data() { return buf_.get(); }
  std::string_view buffered() const { return {buf_.get(), used}; }
  std::size_t size() const { return size_; }
  /// Drops the first `n` bytes (parsed), keeping the rest at the front.
  void consume(std::size_t n);
  /// Doubles the buffer, keeping its bytes; false if it is at its limit already.
  bool grow();

  std::size_t used = 0;
  /// A read found the connection closed (EOF or reset): later reads give EOF at once, as a
  /// blocking socket does. Asio would wait instead: its reactor waits for a readiness edge, and
  /// the close's was used up by the read that saw it.
  bool read_closed = false;

 private:
  std::unique_ptr<char[]> buf_;
  std::size_t size_;
  std::size_t limit_;
};

/// Connects to the first of `endpoints` that accepts, within `timeout` for all of them
/// (beast::error::timeout if none did), with Nagle off: requests are written whole.
net::awaitable<error_code> connect(client_connection& conn,
                                   const std::vector<net::ip::tcp::endpoint>& endpoints,
                                   std::chrono::steady_clock::duration timeout);

/// True for the errors of a connection that the peer closed or reset, as a request sent on a
/// keep-alive connection meets when the server closed it meanwhile.
bool closed_by_peer(const error_code& ec);

namespace detail {
// What a failed socket read means for the response being read (see read_response).
error_code read_failure(const error_code& rec, bool got_some, bool may_be_stale);
}  // namespace detail

/// Parses what `conn` has buffered and reads more, until `until()` is true (it is checked first,
/// and after every parse step), the receiver is full, or the response fails. `on_read()` is called
/// as each socket read completes, before its bytes are parsed (a receive time, an idle timer).
/// Bytes past the point where it stopped stay in `conn` for the next call or response.
///
/// Errors: Beast's parse errors; http::error::end_of_stream if the connection closed before any
/// byte of the response, partial_message if it closed within it (a body delimited by the close
/// ends there without error); client_errc::stale_connection instead of a close or reset before any
/// byte if `may_be_stale` (a reused keep-alive connection, which the server had closed: retry on
/// a new one); client_errc::*_too_long; else the socket's (operation_aborted if the caller's timer
/// cancelled the read).
template <class Receiver, class Until, class OnRead>
net::awaitable<error_code> read_response(client_connection& conn, response_reader<Receiver>& reader,
                                         Until until, OnRead on_read, bool may_be_stale = false) {
  std::size_t pos = 0;  // conn.data()[pos, used) is not parsed yet
  error_code ec;
  while (!until()) {
    if (pos < conn.used) {
      const std::size_t n = reader.put(net::buffer(conn.data() + pos, conn.used - pos), ec);
      pos += n;
      if (ec == http::error::need_buffer) {  // the receiver is full: it gets the rest next time
        ec = {};
        break;
      }
      if (ec && ec != http::error::need_more) break;
      const bool progress = !ec && n > 0;
      ec = {};
      if (progress) continue;  // more may be parsed from what is buffered
    }
    // Keep the unparsed tail at the front and read behind it.
    conn.consume(pos);
    pos = 0;
    if (conn.used == conn.size() && !conn.grow()) {
      ec = reader.is_header_done() ? client_errc::chunk_header_too_long
                                   : client_errc::header_too_long;
      break;
    }
    error_code rec = net::error::eof;
    std::size_t rn = 0;
    if (!conn.read_closed) {
      std::tie(rec, rn) = co_await conn.stream.socket().async_read_some(
          net::buffer(conn.data() + conn.used, conn.size() - conn.used),
          net::as_tuple(net::use_awaitable));
      conn.read_closed = closed_by_peer(rec);
      on_read();
    }
    conn.used += rn;
    if (rec == net::error::eof && reader.is_header_done()) {
      // A body that runs until the connection closes ends here; any other is cut short.
      if (conn.used == 0) reader.put_eof(ec);
      if (conn.used != 0 || ec) ec = http::error::partial_message;
      break;
    }
    if (rec) {
      ec = detail::read_failure(rec, reader.got_some() || conn.used > 0, may_be_stale);
      break;
    }
  }
  conn.consume(pos);
  co_return ec;
}

}  // namespace pdlb::http1
