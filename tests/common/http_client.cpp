#include "common/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include <cctype>
#include <stdexcept>

namespace pdlb::test {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

// A socket whose blocking reads and writes give up after a timeout. Asio's synchronous operations
// ignore SO_RCVTIMEO (they poll() without a limit after EAGAIN), so the wait is done here with
// poll() before each operation.
class timed_socket {
 public:
  explicit timed_socket(net::io_context& ioc) : socket_(ioc) {}
  tcp::socket& socket() { return socket_; }
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};

  using executor_type = tcp::socket::executor_type;
  executor_type get_executor() { return socket_.get_executor(); }

  template <class Buffers>
  std::size_t read_some(const Buffers& b, beast::error_code& ec) {
    if (!wait(POLLIN, ec)) return 0;
    return socket_.read_some(b, ec);
  }
  template <class Buffers>
  std::size_t read_some(const Buffers& b) {
    beast::error_code ec;
    auto n = read_some(b, ec);
    if (ec) throw beast::system_error(ec);
    return n;
  }
  template <class Buffers>
  std::size_t write_some(const Buffers& b, beast::error_code& ec) {
    if (!wait(POLLOUT, ec)) return 0;
    return socket_.write_some(b, ec);
  }
  template <class Buffers>
  std::size_t write_some(const Buffers& b) {
    beast::error_code ec;
    auto n = write_some(b, ec);
    if (ec) throw beast::system_error(ec);
    return n;
  }

 private:
  bool wait(short events, beast::error_code& ec) {
    pollfd p{socket_.native_handle(), events, 0};
    int r;
    do {
      r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
      ec = net::error::timed_out;
      return false;
    }
    return true;
  }
  tcp::socket socket_;
};

}  // namespace

struct http_connection::impl {
  net::io_context ioc;
  timed_socket stream{ioc};
  tcp::socket& socket = stream.socket();
  beast::flat_buffer buffer;
  std::optional<http::response_parser<http::buffer_body>> streaming;
};

namespace {
void set_timeouts(timed_socket& s, std::chrono::milliseconds t) { s.timeout = t; }

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

template <class Header>
void copy_head(const Header& h, http_response& out) {
  out.status = h.result_int();
  for (const auto& f : h) out.headers[lower(std::string(f.name_string()))] = std::string(f.value());
}
}  // namespace

http_connection::http_connection(std::uint16_t port, std::string host,
                                 std::chrono::milliseconds timeout)
    : impl_(std::make_unique<impl>()) {
  impl_->socket.connect(tcp::endpoint(net::ip::make_address(host), port));
  impl_->socket.set_option(tcp::no_delay(true));
  set_timeouts(impl_->stream, timeout);
}

http_connection::~http_connection() = default;

void http_connection::send(const std::string& method, const std::string& target,
                           const std::string& body, const header_list& headers) {
  std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  bool has_te = false, has_ct = false, has_cl = false;
  for (auto& [k, v] : headers) {
    auto lk = lower(k);
    has_te |= lk == "transfer-encoding";
    has_ct |= lk == "content-type";
    has_cl |= lk == "content-length";
    req += k + ": " + v + "\r\n";
  }
  if (!has_ct && !body.empty()) req += "Content-Type: application/json\r\n";
  if (!has_te && !has_cl && (!body.empty() || method == "POST"))
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n";
  req += body;
  send_raw(req);
}

void http_connection::send_raw(const std::string& bytes) {
  net::write(impl_->stream, net::buffer(bytes));
}

http_response http_connection::read_response() {
  http_response out = read_header();
  if (!out.error.empty()) return out;
  for (;;) {
    auto piece = read_body_some();
    if (!piece) break;
    out.body += *piece;
  }
  if (!impl_->streaming) return out;
  out.complete = impl_->streaming->is_done();
  impl_->streaming.reset();
  return out;
}

http_response http_connection::read_header() {
  http_response out;
  impl_->streaming.emplace();
  impl_->streaming->body_limit(boost::none);
  beast::error_code ec;
  http::read_header(impl_->stream, impl_->buffer, *impl_->streaming, ec);
  if (ec) {
    out.error = ec.message();
    impl_->streaming.reset();
    return out;
  }
  copy_head(impl_->streaming->get(), out);
  return out;
}

std::optional<std::string> http_connection::read_body_some() {
  if (!impl_->streaming || impl_->streaming->is_done()) return std::nullopt;
  char buf[65536];
  auto& p = *impl_->streaming;
  for (;;) {
    p.get().body().data = buf;
    p.get().body().size = sizeof buf;
    beast::error_code ec;
    http::read_some(impl_->stream, impl_->buffer, p, ec);
    if (ec == http::error::need_buffer) ec = {};
    std::size_t got = sizeof buf - p.get().body().size;
    if (ec) {
      if (got) return std::string(buf, got);
      return std::nullopt;
    }
    if (got) return std::string(buf, got);
    if (p.is_done()) return std::nullopt;
  }
}

std::string http_connection::read_until_close() {
  std::string out;
  out.append(static_cast<const char*>(impl_->buffer.data().data()), impl_->buffer.size());
  impl_->buffer.consume(impl_->buffer.size());
  char buf[65536];
  for (;;) {
    beast::error_code ec;
    auto n = impl_->stream.read_some(net::buffer(buf), ec);
    out.append(buf, n);
    if (ec) break;
  }
  return out;
}

bool http_connection::peer_closed(std::chrono::milliseconds wait) {
  set_timeouts(impl_->stream, wait);
  char c;
  beast::error_code ec;
  impl_->stream.read_some(net::buffer(&c, 1), ec);
  return ec == net::error::eof || ec == net::error::connection_reset;
}

void http_connection::close() {
  beast::error_code ec;
  impl_->socket.shutdown(tcp::socket::shutdown_both, ec);
  impl_->socket.close(ec);
}

void http_connection::reset() {
  beast::error_code ec;
  impl_->socket.set_option(net::socket_base::linger(true, 0), ec);
  impl_->socket.close(ec);
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
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find("\n\n", pos);
    std::string event = body.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? body.size() : end + 2;
    std::size_t lp = 0;
    std::string data;
    bool has_data = false;
    while (lp <= event.size()) {
      auto le = event.find('\n', lp);
      std::string line = event.substr(lp, le == std::string::npos ? std::string::npos : le - lp);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) == 0) {
        std::string v = line.substr(5);
        if (!v.empty() && v[0] == ' ') v.erase(0, 1);
        if (has_data) data += '\n';
        data += v;
        has_data = true;
      }
      if (le == std::string::npos) break;
      lp = le + 1;
    }
    if (has_data) out.push_back(std::move(data));
  }
  return out;
}

}  // namespace pdlb::test
