// A small blocking HTTP/1.1 client for tests, on a real loopback socket.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace pdlb::test {

struct http_response {
  unsigned status = 0;
  std::map<std::string, std::string> headers;  ///< Names lower-cased.
  std::string body;
  bool complete = false;  ///< The body ended properly (not cut by a closed connection).
  std::string error;      ///< Transport error, if any.

  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

using header_list = std::vector<std::pair<std::string, std::string>>;

/// One keep-alive client connection.
class http_connection {
 public:
  explicit http_connection(std::uint16_t port, std::string host = "127.0.0.1",
                           std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~http_connection();
  http_connection(const http_connection&) = delete;
  http_connection& operator=(const http_connection&) = delete;

  /// Sends a request (Content-Length framing unless a transfer-encoding header is given).
  void send(const std::string& method, const std::string& target, const std::string& body = {},
            const header_list& headers = {});
  /// Sends raw bytes.
  void send_raw(const std::string& bytes);
  /// Reads one whole response.
  http_response read_response();
  /// Reads a response's header only; then read_body_some() gives body bytes as they arrive
  /// (de-chunked), and an empty optional at the end of the body.
  http_response read_header();
  std::optional<std::string> read_body_some();
  /// Reads until the peer closes; returns what came.
  std::string read_until_close();
  /// True if the server closed the connection (a read gives EOF).
  bool peer_closed(std::chrono::milliseconds wait);
  /// Closes the socket (an abrupt client disconnect).
  void close();
  /// Closes with RST instead of FIN.
  void reset();

  http_response request(const std::string& method, const std::string& target,
                        const std::string& body = {}, const header_list& headers = {}) {
    send(method, target, body, headers);
    return read_response();
  }

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

/// A single request on a new connection.
http_response http_request(std::uint16_t port, const std::string& method, const std::string& target,
                           const std::string& body = {}, const header_list& headers = {},
                           std::chrono::milliseconds timeout = std::chrono::seconds(30));

/// The `data:` payloads of an SSE body, in order.
std::vector<std::string> sse_data(const std::string& body);

}  // namespace pdlb::test
