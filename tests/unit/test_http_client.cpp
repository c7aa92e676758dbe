#include "pdlb/http_client.hpp"

#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/write.hpp>

#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace pdlb::http1 {
namespace {

using tcp = net::ip::tcp;

// ---------------------------------------------------------------------------------------------
// append_request_head

std::string head_of(const request_head& h) {
  std::string out = "kept|";  // the head is appended, not assigned
  append_request_head(out, h);
  return out;
}

TEST(HttpClient, HeadOfAPostHasItsFieldsThenContentTypeThenLength) {
  EXPECT_EQ(
      head_of({.method = "POST",
               .target_prefix = "/base",
               .target = "/generate",
               .host = "worker:8000",
               .fields = "Accept: */*\r\n",
               .extra_fields = "X-Request-Id: 7\r\n",
               .content_type = "application/json",
               .content_length = 1234}),
      "kept|POST /base/generate HTTP/1.1\r\nHost: worker:8000\r\nAccept: */*\r\nX-Request-Id: 7\r\n"
      "Content-Type: application/json\r\nContent-Length: 1234\r\n\r\n");
}

TEST(HttpClient, HeadOfAGetWithoutBodyHasNoContentFields) {
  EXPECT_EQ(
      head_of(
          {.method = "GET", .target = "/health", .host = "127.0.0.1", .fields = "Accept: */*\r\n"}),
      "kept|GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n");
}

TEST(HttpClient, HeadOfAPostWithEmptyBodyHasContentLengthZero) {
  EXPECT_EQ(head_of({.method = "POST", .target = "/flush_cache", .host = "w", .content_length = 0}),
            "kept|POST /flush_cache HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n");
}

TEST(HttpClient, HeadWithAPortPutsAnIpv6HostInBrackets) {
  EXPECT_EQ(head_of({.method = "POST", .target = "/generate", .host = "::1", .port = "30000"}),
            "kept|POST /generate HTTP/1.1\r\nHost: [::1]:30000\r\n\r\n");
  EXPECT_EQ(head_of({.method = "POST", .target = "/generate", .host = "10.0.0.2", .port = "80"}),
            "kept|POST /generate HTTP/1.1\r\nHost: 10.0.0.2:80\r\n\r\n");
}

TEST(HttpClient, HeadWithoutAPortWritesTheHostAsGiven) {
  // A worker URL's authority, as written: already bracketed, or no port at all.
  EXPECT_EQ(head_of({.method = "GET", .target = "/", .host = "[::1]:8000"}),
            "kept|GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n");
  EXPECT_EQ(head_of({.method = "GET", .target = "/", .host = "::1"}),
            "kept|GET / HTTP/1.1\r\nHost: ::1\r\n\r\n");
}

TEST(HttpClient, HeadWritesTheLargestContentLength) {
  EXPECT_EQ(head_of({.method = "PUT",
                     .target = "/",
                     .host = "h",
                     .content_length = std::numeric_limits<std::size_t>::max()}),
            "kept|PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n");
}

// ---------------------------------------------------------------------------------------------
// response_reader

// Records everything; takes at most `room` body bytes before it is full.
struct recorder {
  unsigned status = 0;
  std::vector<std::pair<std::string, std::string>> fields;
  int headers_ended = 0;
  std::string body;
  std::size_t room = std::numeric_limits<std::size_t>::max();

  void on_status(unsigned s) { status = s; }
  void on_field(http::field, std::string_view name, std::string_view value) {
    fields.emplace_back(name, value);
  }
  void on_header() { ++headers_ended; }
  std::size_t on_body(std::string_view bytes) {
    const std::size_t n = std::min(room, bytes.size());
    body.append(bytes.substr(0, n));
    room -= n;
    return n;
  }
};

// Only what a receiver must have.
struct status_and_body {
  unsigned status = 0;
  std::string body;
  void on_status(unsigned s) { status = s; }
  std::size_t on_body(std::string_view bytes) {
    body.append(bytes);
    return bytes.size();
  }
};

// Feeds `parts` to `reader` one after the other, as a read loop would: each is appended to what was
// not parsed yet, which is then parsed as far as it goes. Returns the first error but need_more.
template <class R>
error_code feed(response_reader<R>& reader, const std::vector<std::string_view>& parts) {
  std::string pending;
  for (auto part : parts) {
    pending.append(part);
    while (!pending.empty() && !reader.is_done()) {
      error_code ec;
      const std::size_t n = reader.put(net::buffer(pending), ec);
      pending.erase(0, n);
      if (ec == http::error::need_more) break;
      if (ec) return ec;
      if (n == 0) break;
    }
  }
  return {};
}

const std::string length_response =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    "11\r\n\r\n{\"a\":\"xyz\"}";
const std::string chunked_response =
    "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    "5\r\ndata:\r\n6;ext=1\r\n one\n\n\r\n0\r\n\r\n";

void expect_whole(const recorder& r, unsigned status, const std::string& content_type,
                  const std::string& body) {
  EXPECT_EQ(r.status, status);
  EXPECT_EQ(r.headers_ended, 1);
  bool found = false;
  for (const auto& [name, value] : r.fields)
    found |= name == "Content-Type" && value == content_type;
  EXPECT_TRUE(found);
  EXPECT_EQ(r.body, body);
}

TEST(HttpClient, ReaderParsesAContentLengthResponseSplitAtEveryOffset) {
  for (std::size_t cut = 0; cut <= length_response.size(); ++cut) {
    SCOPED_TRACE(cut);
    response_reader<recorder> reader;
    const std::string_view all = length_response;
    ASSERT_FALSE(feed(reader, {all.substr(0, cut), all.substr(cut)}));
    ASSERT_TRUE(reader.is_done());
    expect_whole(reader.receiver(), 200, "application/json", "{\"a\":\"xyz\"}");
  }
}

TEST(HttpClient, ReaderDechunksAChunkedResponseSplitAtEveryPairOfOffsets) {
  const std::string_view all = chunked_response;
  for (std::size_t a = 0; a <= all.size(); ++a) {
    for (std::size_t b = a; b <= all.size(); ++b) {
      SCOPED_TRACE(std::to_string(a) + "," + std::to_string(b));
      response_reader<recorder> reader;
      ASSERT_FALSE(feed(reader, {all.substr(0, a), all.substr(a, b - a), all.substr(b)}));
      ASSERT_TRUE(reader.is_done());
      expect_whole(reader.receiver(), 201, "text/event-stream", "data: one\n\n");
    }
  }
}

TEST(HttpClient, ReaderStopsWithNeedBufferWhenTheReceiverIsFullAndResumesWhereItStopped) {
  for (const std::string* response : {&length_response, &chunked_response}) {
    SCOPED_TRACE(*response);
    response_reader<recorder> reader;
    std::string_view rest = *response;
    reader.receiver().room = 0;
    std::string got;
    std::size_t rounds = 0;
    while (!reader.is_done()) {
      ASSERT_LT(++rounds, 100u);
      error_code ec;
      const std::size_t n = reader.put(net::buffer(rest.data(), rest.size()), ec);
      rest.remove_prefix(n);
      auto& r = reader.receiver();
      if (ec == http::error::need_buffer) {
        EXPECT_EQ(r.room, 0u);  // only a full receiver stops the reader
        r.room = 3;             // three more bytes at a time
        continue;
      }
      ASSERT_FALSE(ec) << ec.message();
    }
    EXPECT_TRUE(rest.empty());
    EXPECT_EQ(reader.receiver().body,
              response == &length_response ? "{\"a\":\"xyz\"}" : "data: one\n\n");
    EXPECT_GT(rounds, 4u);  // the body came in pieces
  }
}

TEST(HttpClient, ReaderRejectsAHeaderOverItsLimit) {
  const std::string big =
      "HTTP/1.1 200 OK\r\nX-Big: " + std::string(200, 'a') + "\r\nContent-Length: 0\r\n\r\n";
  response_reader<recorder> small;
  small.header_limit(128);
  EXPECT_EQ(feed(small, {big}), http::error::header_limit);
  response_reader<recorder> large;
  large.header_limit(512);
  EXPECT_FALSE(feed(large, {big}));
  EXPECT_TRUE(large.is_done());
}

TEST(HttpClient, ReaderKeepsAliveUnlessTheResponseSaysClose) {
  struct example {
    std::string head;
    bool keep_alive;
  };
  const example examples[] = {
      {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true},
      {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false},
      {"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false},
      {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", true},
  };
  for (const auto& e : examples) {
    response_reader<recorder> reader;
    ASSERT_FALSE(feed(reader, {e.head}));
    ASSERT_TRUE(reader.is_done());
    EXPECT_EQ(reader.keep_alive(), e.keep_alive) << e.head;
  }
}

TEST(HttpClient, ReaderWorksWithAReceiverOfOnlyStatusAndBody) {
  response_reader<status_and_body> reader;
  ASSERT_FALSE(feed(reader, {chunked_response}));
  EXPECT_TRUE(reader.is_done());
  EXPECT_EQ(reader.receiver().status, 201u);
  EXPECT_EQ(reader.receiver().body, "data: one\n\n");
}

// ---------------------------------------------------------------------------------------------
// client_connection and read_response, against a server socket written to by the test

class HttpClientLoop : public ::testing::Test {
 protected:
  // A connection with a buffer of `size` bytes that may grow to `limit`, connected to `server`.
  void open(std::size_t size = 4096, std::size_t limit = 8192) {
    conn.emplace(ioc.get_executor(), size, limit);
    error_code ec;
    run(connect(*conn, {acceptor.local_endpoint()}, std::chrono::seconds(5)), ec);
    ASSERT_FALSE(ec) << ec.message();
    acceptor.accept(server);
  }
  void send(std::string_view bytes) { net::write(server, net::buffer(bytes.data(), bytes.size())); }
  void close_server() { server.close(); }

  // Reads into `reader` until `until()`, counting the socket reads.
  template <class R, class Until>
  error_code read(response_reader<R>& reader, Until until, bool may_be_stale = false) {
    error_code ec;
    run(read_response(
            *conn, reader, until, [this] { ++reads; }, may_be_stale),
        ec);
    return ec;
  }
  template <class R>
  error_code read_whole(response_reader<R>& reader, bool may_be_stale = false) {
    return read(
        reader, [&] { return reader.is_done(); }, may_be_stale);
  }

  void run(net::awaitable<error_code> op, error_code& out) {
    bool finished = false;
    net::co_spawn(ioc, std::move(op), [&](std::exception_ptr e, error_code ec) {
      if (e) std::rethrow_exception(e);
      out = ec;
      finished = true;
    });
    ioc.restart();
    ioc.run_for(std::chrono::seconds(5));
    ASSERT_TRUE(finished) << "the operation did not end";
  }

  net::io_context ioc;
  tcp::acceptor acceptor{ioc, {net::ip::make_address("127.0.0.1"), 0}};
  tcp::socket server{ioc};
  std::optional<client_connection> conn;
  int reads = 0;
};

TEST_F(HttpClientLoop, BytesAfterAResponseStayBufferedForTheNextOne) {
  open();
  send(length_response + chunked_response);
  response_reader<recorder> first;
  ASSERT_FALSE(read_whole(first));
  expect_whole(first.receiver(), 200, "application/json", "{\"a\":\"xyz\"}");
  EXPECT_EQ(conn->buffered(), chunked_response);
  response_reader<recorder> second;
  ASSERT_FALSE(read_whole(second));
  expect_whole(second.receiver(), 201, "text/event-stream", "data: one\n\n");
  EXPECT_EQ(reads, 1);  // the second came with the first
  EXPECT_EQ(conn->buffered(), "");
}

TEST_F(HttpClientLoop, SmallBufferReadsAResponseInManyReadsAndGrowsOnlyForTheHeader) {
  open(16, 128);
  send(chunked_response);
  response_reader<recorder> reader;
  ASSERT_FALSE(read_whole(reader));
  expect_whole(reader.receiver(), 201, "text/event-stream", "data: one\n\n");
  EXPECT_EQ(conn->size(), 128u);  // the 85-byte header needed 128
  EXPECT_GT(reads, 1);
}

TEST_F(HttpClientLoop, HeaderLargerThanTheBufferLimitIsHeaderTooLong) {
  open(16, 64);
  send(length_response);
  response_reader<recorder> reader;
  EXPECT_EQ(read_whole(reader), client_errc::header_too_long);
  EXPECT_EQ(make_error_code(client_errc::header_too_long).message(), "header too long");
}

TEST_F(HttpClientLoop, ChunkHeaderLargerThanTheBufferLimitIsChunkHeaderTooLong) {
  open(64, 128);
  send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + std::string(200, 'e') +
       "\r\nhello\r\n0\r\n\r\n");
  response_reader<recorder> reader;
  EXPECT_EQ(read_whole(reader), client_errc::chunk_header_too_long);
  EXPECT_EQ(make_error_code(client_errc::chunk_header_too_long).message(), "chunk header too long");
}

TEST_F(HttpClientLoop, StopsWhenUntilHoldsLeavingTheBodyBuffered) {
  open();
  send(length_response);
  response_reader<recorder> reader;
  ASSERT_FALSE(read(reader, [&] { return reader.is_header_done(); }));
  EXPECT_EQ(reader.receiver().status, 200u);
  EXPECT_EQ(reader.receiver().body, "");
  EXPECT_EQ(conn->buffered(), "{\"a\":\"xyz\"}");
  ASSERT_FALSE(read_whole(reader));
  EXPECT_EQ(reader.receiver().body, "{\"a\":\"xyz\"}");
}

TEST_F(HttpClientLoop, StopsWithoutErrorWhenTheReceiverIsFull) {
  open();
  send(length_response);
  response_reader<recorder> reader;
  reader.receiver().room = 4;
  ASSERT_FALSE(read_whole(reader));
  EXPECT_FALSE(reader.is_done());
  EXPECT_EQ(reader.receiver().body, "{\"a\"");
  EXPECT_EQ(conn->buffered(), ":\"xyz\"}");
  reader.receiver().room = 100;
  ASSERT_FALSE(read_whole(reader));
  EXPECT_EQ(reader.receiver().body, "{\"a\":\"xyz\"}");
}

TEST_F(HttpClientLoop, BodyDelimitedByTheCloseEndsThere) {
  open();
  send("HTTP/1.1 200 OK\r\n\r\nuntil the end");
  close_server();
  response_reader<recorder> reader;
  ASSERT_FALSE(read_whole(reader));
  EXPECT_TRUE(reader.is_done());
  EXPECT_EQ(reader.receiver().body, "until the end");
  EXPECT_FALSE(reader.keep_alive());
}

TEST_F(HttpClientLoop, BodyCutByTheCloseIsPartialMessage) {
  open();
  send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
  close_server();
  response_reader<recorder> reader;
  EXPECT_EQ(read_whole(reader), http::error::partial_message);
  EXPECT_EQ(reader.receiver().body, "abc");
}

TEST_F(HttpClientLoop, HeaderCutByTheCloseIsPartialMessage) {
  open();
  send("HTTP/1.1 200 OK\r\nContent-Le");
  close_server();
  response_reader<recorder> reader;
  EXPECT_EQ(read_whole(reader, true), http::error::partial_message);  // not stale: bytes came
}

TEST_F(HttpClientLoop, CloseBeforeAnyByteIsEndOfStreamOrStaleOnAReusedConnection) {
  open();
  close_server();
  response_reader<recorder> fresh;
  EXPECT_EQ(read_whole(fresh), http::error::end_of_stream);
  response_reader<recorder> reused;
  EXPECT_EQ(read_whole(reused, true), client_errc::stale_connection);
}

TEST_F(HttpClientLoop, ReadAfterTheCloseWasSeenGivesEndOfStreamAtOnce) {
  open();
  send("HTTP/1.1 200 OK\r\n\r\nuntil the end");
  close_server();
  response_reader<recorder> first;
  ASSERT_FALSE(read_whole(first));
  EXPECT_TRUE(conn->read_closed);
  const int reads_before = reads;
  response_reader<recorder> next;
  EXPECT_EQ(read_whole(next), http::error::end_of_stream);  // run() fails the test if it waits
  EXPECT_EQ(reads, reads_before);                           // no socket read
}

TEST_F(HttpClientLoop, ParseErrorIsReturnedAsBeastSaysIt) {
  open();
  send("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
  response_reader<recorder> reader;
  EXPECT_EQ(read_whole(reader), http::error::bad_content_length);
}

TEST_F(HttpClientLoop, ConnectToAClosedPortFails) {
  const auto endpoint = acceptor.local_endpoint();
  acceptor.close();
  client_connection c(ioc.get_executor(), 64, 64);
  error_code ec;
  run(connect(c, {endpoint}, std::chrono::seconds(5)), ec);
  EXPECT_EQ(ec, net::error::connection_refused);
}

TEST(HttpClient, ClosedByPeerIsTrueForCloseAndResetOnly) {
  EXPECT_TRUE(closed_by_peer(net::error::eof));
  EXPECT_TRUE(closed_by_peer(http::error::end_of_stream));
  EXPECT_TRUE(closed_by_peer(net::error::connection_reset));
  EXPECT_TRUE(closed_by_peer(net::error::broken_pipe));
  EXPECT_FALSE(closed_by_peer(net::error::operation_aborted));
  EXPECT_FALSE(closed_by_peer(http::error::partial_message));
}

}  // namespace
}  // namespace pdlb::http1
