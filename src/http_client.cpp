#include "pdlb/http_client.hpp"

#include <boost/asio/connect.hpp>

#include <charconv>
#include <cstring>

namespace pdlb::http1 {

using tcp = net::ip::tcp;

void append_request_head(std::string& out, const request_head& h) {
  constexpr std::string_view version = " HTTP/1.1\r\nHost: ";
  constexpr std::string_view content_type = "Content-Type: ";
  constexpr std::string_view content_length = "Content-Length: ";
  const bool bracket = !h.port.empty() && h.host.find(':') != std::string_view::npos;  // IPv6
  out.reserve(out.size() + h.method.size() + 1 + h.target_prefix.size() + h.target.size() +
              version.size() + h.host.size() + 3 + h.port.size() + 2 + h.fields.size() +
              h.extra_fields.size() + content_type.size() + h.content_type.size() + 2 +
              content_length.size() + 20 + 2 + 2);
  out.append(h.method);
  out.push_back(' ');
  out.append(h.target_prefix);
  out.append(h.target);
  out.append(version);
  if (bracket) out.push_back('[');
  out.append(h.host);
  if (bracket) out.push_back(']');
  if (!h.port.empty()) {
    out.push_back(':');
    out.append(h.port);
  }
  out.append("\r\n");
  out.append(h.fields);
  out.append(h.extra_fields);
  if (!h.content_type.empty()) {
    out.append(content_type);
    out.append(h.content_type);
    out.append("\r\n");
  }
  if (h.content_length) {
    char digits[20];
    const auto end = std::to_chars(digits, digits + sizeof digits, *h.content_length).ptr;
    out.append(content_length);
    out.append(digits, end);
    out.append("\r\n");
  }
  out.append("\r\n");
}

namespace {
class client_category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "pdlb.http_client"; }
  std::string message(int ev) const override {
    switch (static_cast<client_errc>(ev)) {
      case client_errc::stale_connection:
        return "connection closed by the server while idle";
      case client_errc::header_too_long:
        return "header too long";
      case client_errc::chunk_header_too_long:
        return "chunk header too long";
    }
    return "unknown HTTP client error";
  }
};
}  // namespace

const boost::system::error_category& client_category() {
  static client_category_impl cat;
  return cat;
}

error_code make_error_code(client_errc e) { return {static_cast<int>(e), client_category()}; }

client_connection::client_connection(const net::any_io_executor& ex, std::size_t buffer_size,
                                     std::size_t buffer_limit)
    : stream(ex), buf_(new char[buffer_size]), size_(buffer_size), limit_(buffer_limit) {}

void client_connection::consume(std::size_t n) {
  if (n == 0) return;
  std::memmove(buf_.get(), buf_.get() + n, used - n);
  used -= n;
}

bool client_connection::grow() {
  if (size_ >= limit_) return false;
  std::unique_ptr<char[]> bigger(new char[size_ * 2]);
  if (used) std::memcpy(bigger.get(), buf_.get(), used);
  buf_ = std::move(bigger);
  size_ *= 2;
  return true;
}

net::awaitable<error_code> connect(client_connection& conn,
                                   const std::vector<tcp::endpoint>& endpoints,
                                   std::chrono::steady_clock::duration timeout) {
  conn.stream.expires_after(timeout);
  auto [ec, ep] = co_await conn.stream.async_connect(endpoints, net::as_tuple(net::use_awaitable));
  if (ec) co_return ec;
  conn.stream.expires_never();
  conn.stream.socket().set_option(tcp::no_delay(true), ec);
  co_return error_code{};
}

bool closed_by_peer(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof ||
         ec == net::error::connection_reset || ec == net::error::broken_pipe;
}

namespace detail {

// A server may close an idle keep-alive connection just as a request is sent on it: the request
// then meets a close or a reset before any byte of an answer (it was never read), and is safe to
// send again on a new connection.
error_code read_failure(const error_code& rec, bool got_some, bool may_be_stale) {
  if (may_be_stale && !got_some && closed_by_peer(rec)) return client_errc::stale_connection;
  if (rec == net::error::eof)
    return got_some ? http::error::partial_message : http::error::end_of_stream;
  return rec;
}

}  // namespace detail

}  // namespace pdlb::http1
