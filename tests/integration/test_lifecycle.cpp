// Start-up, command line and shutdown of the real binary.
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <csignal>
#include <regex>

namespace pdlb::test {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

int run_to_exit(std::vector<std::string> argv, std::string* output) {
  argv.insert(argv.begin(), PDLB_BIN);
  child_process p(argv);
  auto rc = p.wait_exit(20s);
  if (output) *output = p.output();
  return rc.value_or(-1);
}

TEST(Lifecycle, HelpListsMinilbFlagsAndExitsZero) {
  std::string out;
  EXPECT_EQ(run_to_exit({"--help"}, &out), 0);
  for (const char* flag : {"--host", "--port", "--policy", "--prefill", "--decode", "--prefill-bootstrap-ports",
                           "--log-interval", "--timeout", "--connector-limit", "--connector-limit-per-host",
                           "--rust-lb", "--threads", "--max-body-size"})
    EXPECT_THAT(out, HasSubstr(flag));
}

TEST(Lifecycle, VersionPrintsAndExitsZero) {
  std::string out;
  EXPECT_EQ(run_to_exit({"--version"}, &out), 0);
  EXPECT_THAT(out, HasSubstr(PDLB_VERSION));
}

TEST(Lifecycle, BootstrapPortCountMismatchFailsAtStartWithAClearMessage) {
  std::string out;
  EXPECT_EQ(run_to_exit({"--prefill", "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3",
                         "--prefill-bootstrap-ports", "1", "2"},
                        &out),
            2);
  EXPECT_THAT(out, HasSubstr("must match"));
}

TEST(Lifecycle, PortInUseFailsWithNonZeroExit) {
  auto first = pdlb_process::start({});
  std::string out;
  EXPECT_NE(run_to_exit({"--host", "127.0.0.1", "--port", std::to_string(first->port())}, &out), 0);
  EXPECT_THAT(out, HasSubstr("cannot listen"));
}

TEST(Lifecycle, RustLbFlagWarnsAndRuns) {
  auto lb = pdlb_process::start({"--rust-lb"});
  EXPECT_TRUE(lb->process().wait_for_line(std::regex("--rust-lb has no effect"), 1s));
  EXPECT_EQ(http_request(lb->port(), "GET", "/health").status, 200u);
}

TEST(Lifecycle, SigtermWhenIdleExitsZeroPromptly) {
  auto lb = pdlb_process::start({});
  // An idle keep-alive client must not hold up the exit.
  http_connection idle(lb->port());
  ASSERT_EQ(idle.request("GET", "/health").status, 200u);
  auto start = std::chrono::steady_clock::now();
  lb->process().signal(SIGTERM);
  auto rc = lb->process().wait_exit(10s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

TEST(Lifecycle, SigtermLetsAnInFlightStreamFinishThenExitsZero) {
  auto c = cluster::start(1, 1, {"--shutdown-grace", "20"});
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 0.05}});
  http_connection conn(c->port());
  conn.send("POST", "/generate", json{{"text", "drain"}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 20}}}}.dump());
  auto head = conn.read_header();
  ASSERT_EQ(head.status, 200u);
  c->lb->process().signal(SIGTERM);
  ASSERT_TRUE(c->lb->process().wait_for_line(std::regex("no longer accepting"), 5s));
  // New connections are refused while the stream drains.
  EXPECT_FALSE(http_request(c->port(), "GET", "/health", {}, {}, 2s).error.empty());
  std::string body;
  while (auto piece = conn.read_body_some()) body += *piece;
  EXPECT_THAT(body, HasSubstr("[DONE]"));
  auto rc = c->lb->process().wait_exit(10s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0);
}

TEST(Lifecycle, SigtermPastTheGracePeriodCutsStreamsAndStillExitsZero) {
  auto c = cluster::start(1, 1, {"--shutdown-grace", "0.5"});
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 0.2}});
  http_connection conn(c->port());
  conn.send("POST", "/generate", json{{"text", "cut"}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 1000}}}}.dump());
  ASSERT_EQ(conn.read_header().status, 200u);
  c->lb->process().signal(SIGTERM);
  auto rc = c->lb->process().wait_exit(10s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0);
  // The decode leg was closed with it, so the worker aborted the request.
  EXPECT_TRUE(sim_wait(*c->decode[0], "min_aborted=1&active=0", 10s)) << c->decode[0]->stats().dump();
}

TEST(Lifecycle, PeriodicStatusLineReportsRatesAndInFlight) {
  auto c = cluster::start(1, 1);
  c->lb.reset();
  auto args = std::vector<std::string>{"--prefill", c->prefill[0]->url(), std::to_string(c->prefill[0]->bootstrap_port()),
                                       "--decode", c->decode[0]->url(), "--log-interval", "1"};
  c->lb = pdlb_process::start(args);
  ASSERT_EQ(c->post("/generate", {{"text", "x"}, {"sampling_params", {{"max_new_tokens", 1}}}}).status, 200u);
  auto line = c->lb->process().wait_for_line(std::regex(R"(requests/s: [0-9.]+, in flight: (\d+), errors: \d+)"), 5s);
  ASSERT_TRUE(line.has_value()) << c->lb->process().output();
}

TEST(Lifecycle, LogsNeverContainPrompts) {
  auto c = cluster::start(1, 1);
  std::string secret = "TOP-SECRET-PROMPT-4711";
  ASSERT_EQ(c->post("/generate", {{"text", secret}, {"sampling_params", {{"max_new_tokens", 1}}}}).status, 200u);
  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 500}, {"count", 1}});
  c->post("/generate", {{"text", secret}, {"sampling_params", {{"max_new_tokens", 1}}}});
  c->post_raw("/generate", "{\"text\": \"" + secret);  // malformed
  EXPECT_THAT(c->lb->process().output(), ::testing::Not(HasSubstr(secret)));
}

}  // namespace
}  // namespace pdlb::test

namespace pdlb::test {
namespace {

TEST(Lifecycle, SigtermWithAThousandOpenStreamsFinishesEveryOneAndExitsZero) {
  // Steps of 20 ms and 30 tokens: each stream lasts over half a second, so all 1,000 are open when
  // the signal comes; the grace period is long enough for every one to finish whole.
  auto c = cluster::start(1, 1, {"--shutdown-grace", "60"},
                          {"--prefill-tokens-per-s", "0", "--step-base-ms", "20", "--step-per-req-ms", "0"});
  constexpr int streams = 1000;
  std::vector<std::unique_ptr<http_connection>> conns;
  std::string body = json{{"text", "drain me"}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 30}}}}.dump();
  for (int i = 0; i < streams; ++i) {
    conns.push_back(std::make_unique<http_connection>(c->port(), "127.0.0.1", 60s));
    conns.back()->send("POST", "/generate", body);
  }
  ASSERT_TRUE(sim_wait(*c->decode[0], "min_received=" + std::to_string(streams), 60s)) << c->decode[0]->stats().dump();
  c->lb->process().signal(SIGTERM);
  int whole = 0;
  for (auto& conn : conns) {
    auto r = conn->read_response();
    if (r.status == 200 && r.complete && r.body.find("data: [DONE]") != std::string::npos) ++whole;
  }
  EXPECT_EQ(whole, streams);
  auto rc = c->lb->process().wait_exit(30s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0);
  EXPECT_TRUE(sim_wait(*c->decode[0], "active=0", 10s));
}

}  // namespace
}  // namespace pdlb::test
