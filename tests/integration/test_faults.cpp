// Faults where minilb is wrong: pdlb answers with a clear error, cancels the other leg at once,
// never hangs past --timeout, and keeps serving.
#include "integration/cluster.hpp"
#include "common/canned_worker.hpp"

#include <gmock/gmock.h>

#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <thread>

namespace pdlb::test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

TEST(Faults, PrefillErrorStatusReachesClientAndCancelsDecode) {
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  // The prefill answers 503 after a delay, so the decode leg is surely waiting for KV by then.
  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 503}, {"latency_ms", 500}, {"count", 1}});
  auto start = std::chrono::steady_clock::now();
  auto pending = std::async(std::launch::async, [&] { return c->post("/generate", small_request()); });
  EXPECT_TRUE(sim_wait(*c->decode[0], "min_received=1", 10s));
  auto r = pending.get();
  EXPECT_EQ(r.status, 503u) << r.body;
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  EXPECT_THAT(r.body, HasSubstr("prefill"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  // The decode leg was waiting for the KV cache; pdlb closed it, so the sim counts it aborted.
  EXPECT_TRUE(sim_wait(*c->decode[0], "min_aborted=1&active=0", 10s)) << c->decode[0]->stats().dump();
  expect_clean_and_serving(*c);
}

TEST(Faults, PrefillRefusingConnectionsGives502AndLeavesNoDecodeWork) {
  auto c = cluster::start(1, 1);
  post_json(*c->prefill[0], "/sim/fault", {{"refuse_connections", true}});
  auto r = c->post("/generate", small_request());
  EXPECT_EQ(r.status, 502u) << r.body;
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  EXPECT_TRUE(sim_wait(*c->decode[0], "active=0", 10s)) << c->decode[0]->stats().dump();
}

TEST(Faults, PrefillDroppingTheConnectionGives502) {
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  post_json(*c->prefill[0], "/sim/fault", {{"drop_connection", true}, {"count", 1}});
  auto r = c->post("/generate", small_request());
  EXPECT_EQ(r.status, 502u) << r.body;
  EXPECT_TRUE(is_error_body(r.body));
  expect_clean_and_serving(*c);
}

TEST(Faults, StalledPrefillTimesOutWith504AfterTimeout) {
  auto c = cluster::start(1, 1, {"--timeout", "1", "--max-retries", "0"});
  post_json(*c->prefill[0], "/sim/fault", {{"stall", true}, {"count", 1}});
  auto start = std::chrono::steady_clock::now();
  auto r = c->post("/generate", small_request());
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status, 504u) << r.body;
  EXPECT_TRUE(is_error_body(r.body));
  EXPECT_GE(took, 900ms);
  EXPECT_LT(took, 5s);
  expect_clean_and_serving(*c);
}

TEST(Faults, PrefillFailingInAStreamGivesAnErrorAndCancelsDecode) {
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 500}, {"latency_ms", 500}, {"count", 1}});
  auto pending = std::async(std::launch::async, [&] { return c->post("/generate", small_request(true)); });
  EXPECT_TRUE(sim_wait(*c->decode[0], "min_received=1", 10s));
  auto r = pending.get();
  // The sim sends stream headers at once, so the error comes as the stream's last event; were the
  // headers not out yet, it would be the prefill's status.
  if (r.status == 200) {
    auto events = sse_data(r.body);
    ASSERT_FALSE(events.empty());
    EXPECT_TRUE(is_error_body(events.back())) << r.body;
    EXPECT_THAT(r.body, Not(HasSubstr("[DONE]")));
    EXPECT_TRUE(r.complete);
  } else {
    EXPECT_EQ(r.status, 500u);
    EXPECT_TRUE(is_error_body(r.body)) << r.body;
  }
  EXPECT_TRUE(sim_wait(*c->decode[0], "min_aborted=1&active=0", 10s)) << c->decode[0]->stats().dump();
  expect_clean_and_serving(*c);
}

TEST(Faults, PrefillFailingAtOnceLeavesNoDecodeWork) {
  // Without delay the decode leg may be cancelled before it reached the worker, or while it waits
  // for KV: either way nothing may be left running there.
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 500}, {"count", 3}});
  for (bool stream : {false, true, false}) {
    auto r = c->post("/generate", small_request(stream));
    EXPECT_TRUE(r.status == 500u || (r.status == 200u && is_error_body(sse_data(r.body).back()))) << r.body;
  }
  auto d = c->decode[0]->stats();
  EXPECT_EQ(d["finished"], 0);
  expect_clean_and_serving(*c);
}

TEST(Faults, DecodeDyingMidStreamEndsWithErrorEventAndNoDone) {
  auto c = cluster::start(1, 1);
  post_json(*c->decode[0], "/sim/fault", {{"die_after_tokens", 3}, {"count", 1}});
  auto r = c->post("/generate", small_request(true, 10));
  ASSERT_EQ(r.status, 200u) << r.body;
  auto events = sse_data(r.body);
  ASSERT_GE(events.size(), 2u) << r.body;
  EXPECT_TRUE(is_error_body(events.back())) << r.body;
  EXPECT_THAT(r.body, Not(HasSubstr("[DONE]")));
  // Token events before the error made it through.
  EXPECT_TRUE(parse_json(events[0]).contains("text"));
  expect_clean_and_serving(*c);
}

TEST(Faults, DecodeErrorStatusIsRelayedAsIs) {
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  post_json(*c->decode[0], "/sim/fault", {{"fail_status", 429}, {"count", 1}});
  auto r = c->post("/generate", small_request());
  EXPECT_EQ(r.status, 429u) << r.body;
  expect_clean_and_serving(*c);
}

TEST(Faults, DecodeErrorStatusOnAStreamRequestIsRelayedWithItsStatus) {
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  post_json(*c->decode[0], "/sim/fault", {{"fail_status", 503}, {"count", 1}});
  auto r = c->post("/generate", small_request(true));
  EXPECT_EQ(r.status, 503u) << r.body;
  EXPECT_TRUE(parse_json(r.body).is_object()) << r.body;
  expect_clean_and_serving(*c);
}

TEST(Faults, ClientLeavingAStreamCancelsBothLegs) {
  auto c = cluster::start(1, 1);
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 0.05}});
  {
    http_connection conn(c->port());
    conn.send("POST", "/generate", small_request(true, 100000).dump());
    auto head = conn.read_header();
    ASSERT_EQ(head.status, 200u);
    auto first = conn.read_body_some();
    ASSERT_TRUE(first.has_value());
    EXPECT_TRUE(sim_wait(*c->decode[0], "running=1", 10s));
    conn.close();
  }
  EXPECT_TRUE(sim_wait(*c->decode[0], "min_aborted=1&active=0", 10s)) << c->decode[0]->stats().dump();
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", nullptr}});
  expect_clean_and_serving(*c);
}

TEST(Faults, ClientLeavingANonStreamRequestCancelsBothLegs) {
  auto c = cluster::start(1, 1);
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 0.05}});
  {
    http_connection conn(c->port());
    conn.send("POST", "/generate", small_request(false, 100000).dump());
    EXPECT_TRUE(sim_wait(*c->decode[0], "running=1", 10s));
    conn.reset();
  }
  EXPECT_TRUE(sim_wait(*c->decode[0], "min_aborted=1&active=0", 10s)) << c->decode[0]->stats().dump();
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", nullptr}});
  expect_clean_and_serving(*c);
}

TEST(Faults, TimeoutBetweenStreamEventsEndsTheStreamWithAnError) {
  auto c = cluster::start(1, 1, {"--timeout", "1"});
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 3}});
  auto start = std::chrono::steady_clock::now();
  auto r = c->post("/generate", small_request(true, 5));
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, 6s);
  if (r.status == 200) {
    auto events = sse_data(r.body);
    ASSERT_FALSE(events.empty()) << r.body;
    EXPECT_TRUE(is_error_body(events.back())) << r.body;
    EXPECT_THAT(r.body, Not(HasSubstr("[DONE]")));
  } else {
    EXPECT_EQ(r.status, 504u) << r.body;
  }
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", nullptr}});
  expect_clean_and_serving(*c);
}

TEST(Faults, HealthyStreamLongerThanTimeoutIsNotCut) {
  // Events every 0.3 s for about 3 s with --timeout 1: the timeout is between events, not total.
  auto c = cluster::start(1, 1, {"--timeout", "1"});
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 0.3}});
  auto r = c->post("/generate", small_request(true, 10));
  ASSERT_EQ(r.status, 200u) << r.body;
  auto events = sse_data(r.body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]") << r.body;
}

TEST(Faults, WorkerRestartWithIdlePooledConnectionsDoesNotFailRequests) {
  auto c = cluster::start(1, 1);
  // Fill the pool with a few idle connections to the decode worker.
  for (int i = 0; i < 3; ++i) ASSERT_EQ(c->post("/generate", small_request()).status, 200u);
  // Restart the decode worker on the same port: the pooled connections are now dead.
  auto port = c->decode[0]->port();
  c->decode[0].reset();
  auto args = fast_sim_args();
  args.push_back("--port");
  args.push_back(std::to_string(port));
  c->decode[0] = sim_worker::start("decode", args);
  for (int i = 0; i < 5; ++i) {
    auto r = c->post("/generate", small_request());
    EXPECT_EQ(r.status, 200u) << i << " " << r.body;
  }
}

}  // namespace
}  // namespace pdlb::test

namespace pdlb::test {
namespace {

TEST(Faults, IdleUpstreamConnectionsAreClosedAfterTheIdleTimeoutWithoutTraffic) {
  auto c = cluster::start(1, 1, {"--upstream-idle-timeout", "0.3"});
  for (int i = 0; i < 3; ++i) ASSERT_EQ(c->post("/generate", small_request()).status, 200u);
  auto open_connections = [&] {
    auto s = parse_json(c->get("/pdlb/stats").body);
    return s["prefill"][0]["open_connections"].get<int>() + s["decode"][0]["open_connections"].get<int>();
  };
  EXPECT_GT(open_connections(), 0);
  // Nothing to await from outside: pdlb prunes on its own timer. Poll, bounded.
  int open = open_connections();
  for (int i = 0; i < 100 && open > 0; ++i) {
    std::this_thread::sleep_for(50ms);
    open = open_connections();
  }
  EXPECT_EQ(open, 0);
  EXPECT_EQ(c->post("/generate", small_request()).status, 200u);
}

// A worker whose TCP handshake never completes, made on loopback without privileges: a listener
// with backlog 0 never accepts, and one connection already fills its accept queue, so Linux drops
// every further SYN and connect() hangs (the client retransmits until it gives up).
class unanswered_listener {
 public:
  unanswered_listener() {
    sockaddr_in addr;
    listener_ = loopback_listener(0, addr);
    port_ = ntohs(addr.sin_port);
    filler_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (filler_ < 0 || ::connect(filler_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("unanswered_listener: cannot fill the accept queue");
  }
  ~unanswered_listener() {
    ::close(filler_);
    ::close(listener_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  int listener_ = -1;
  int filler_ = -1;
  std::uint16_t port_ = 0;
};

TEST(Faults, PrefillWhoseHandshakeNeverCompletesGives504AfterConnectTimeoutAndCancelsDecode) {
  unanswered_listener hole;
  auto decode = sim_worker::start("decode", fast_sim_args());
  auto lb = pdlb_process::start({"--prefill", hole.url(), "--prefill-bootstrap-ports", "9",
                                 "--decode", decode->url(), "--connect-timeout", "1"});
  auto start = std::chrono::steady_clock::now();
  auto r = http_request(lb->port(), "POST", "/generate", small_request().dump());
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status, 504u) << r.body;
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  EXPECT_THAT(r.body, HasSubstr("connecting")) << r.body;
  EXPECT_GE(took, 900ms);
  EXPECT_LT(took, 5s);
  // The decode leg was waiting for the KV cache; it is cancelled with the request.
  EXPECT_TRUE(sim_wait(*decode, "min_aborted=1&active=0", 10s)) << decode->stats().dump();
  auto stats = parse_json(http_request(lb->port(), "GET", "/pdlb/stats").body);
  for (const char* pool : {"prefill", "decode"})
    for (auto& w : stats[pool]) EXPECT_EQ(w["in_flight"], 0) << stats.dump();
}

// pdlb's upstream header limit is 64 KiB. Here the status line (3 KB, with a long reason phrase) and
// the fields (63 KB) are each under it, the whole header over it.
TEST(Faults, DecodeAnswerWithAHeaderOverTheLimitGives502) {
  const std::string body = R"({"text":"x","meta_info":{}})";
  canned_worker decode("HTTP/1.1 200 " + std::string(3000, 'O') + "\r\nX-Big: " + std::string(63000, 'a') +
                       "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\n\r\n" + body);
  auto prefill = sim_worker::start("prefill", fast_sim_args());
  auto lb = pdlb_process::start({"--prefill", prefill->url(), "--prefill-bootstrap-ports",
                                 std::to_string(prefill->bootstrap_port()), "--decode", decode.url(),
                                 "--max-retries", "0"});  // the canned worker answers once
  auto r = http_request(lb->port(), "POST", "/generate", small_request().dump());
  EXPECT_EQ(r.status, 502u) << r.body.substr(0, 200);
  EXPECT_TRUE(is_error_body(r.body)) << r.body.substr(0, 200);
  EXPECT_TRUE(sim_wait(*prefill, "active=0", 10s)) << prefill->stats().dump();
  auto stats = parse_json(http_request(lb->port(), "GET", "/pdlb/stats").body);
  for (const char* pool : {"prefill", "decode"})
    for (auto& w : stats[pool]) EXPECT_EQ(w["in_flight"], 0) << stats.dump();
}

}  // namespace
}  // namespace pdlb::test
