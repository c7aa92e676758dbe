// GET /metrics: a real scrape passes promtool, and traffic through pdlb and pdlb-sim workers moves
// each counter and histogram count by exactly what happened.
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <thread>

#include <unistd.h>

namespace pdlb::test {
namespace {

using namespace std::chrono_literals;

// One scrape: "name{labels}" -> value (comments skipped).
using samples = std::map<std::string, double>;

samples parse_metrics(const std::string& text) {
  samples out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty() || line[0] == '#') continue;
    auto space = line.rfind(' ');
    if (space == std::string::npos) {
      ADD_FAILURE() << "malformed sample line: " << line;
      continue;
    }
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

samples scrape(cluster& c) {
  auto r = c.get("/metrics");
  EXPECT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return parse_metrics(r.body);
}

// A sample's value, 0 when absent (a counter not yet moved may be left out).
double value(const samples& s, const std::string& key) {
  auto it = s.find(key);
  return it == s.end() ? 0 : it->second;
}

// A scrape once only the scrape itself is in flight (within 5 s): requests whose client has its
// answer are then counted.
samples scrape_when_idle(cluster& c) {
  samples s;
  for (int i = 0; i < 500; ++i) {
    s = scrape(c);
    if (value(s, "pdlb_requests_in_flight") == 1) break;
    std::this_thread::sleep_for(10ms);
  }
  return s;
}

bool have_promtool() { return std::system("command -v promtool >/dev/null 2>&1") == 0; }

// Runs `promtool check metrics` on `text`; "" if it passed, else why not.
std::string promtool_check(const std::string& text) {
  char path[] = "/tmp/pdlb-metrics-XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) return "mkstemp failed";
  ::close(fd);
  std::ofstream(path) << text;
  const std::string out_path = std::string(path) + ".out";
  const int rc = std::system(("promtool check metrics < " + std::string(path) + " > " + out_path + " 2>&1").c_str());
  std::ifstream in(out_path);
  std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(path);
  std::remove(out_path.c_str());
  return rc == 0 ? "" : "promtool check metrics failed: " + said;
}

TEST(Metrics, AScrapeAfterTrafficPassesPromtoolCheckMetrics) {
  auto c = cluster::start(1, 1);
  ASSERT_EQ(c->post("/generate", small_request()).status, 200u);
  ASSERT_EQ(c->post("/generate", small_request(true)).status, 200u);
  auto r = c->get("/metrics");
  ASSERT_EQ(r.status, 200u);
  if (!have_promtool()) {
    // CI installs it (scripts/setup.sh: Debian package prometheus); elsewhere it is optional.
    if (std::getenv("CI")) FAIL() << "promtool is missing: run scripts/setup.sh";
    GTEST_SKIP() << "promtool not found (apt-get install prometheus, or scripts/setup.sh)";
  }
  EXPECT_EQ(promtool_check(r.body), "") << r.body;
}

TEST(Metrics, PostIsNotAllowed) {
  auto c = cluster::start(1, 1);
  auto r = c->post_raw("/metrics", "");
  EXPECT_EQ(r.status, 405u);
  EXPECT_EQ(r.header("allow"), "GET");
}

std::string gen(const std::string& status) { return "pdlb_requests_total{route=\"/generate\",status=\"" + status + "\"}"; }
std::string worker_key(const std::string& name, const sim_worker& w, const char* role, const std::string& more = "") {
  return name + "{worker=\"" + w.url() + "\",role=\"" + role + "\"" + more + "}";
}

// The done-when test: successes, a prefill failure (retried), a stream and a client that
// leaves mid-stream, each checked for exactly the counts it should move.
TEST(Metrics, CountersAndHistogramCountsMoveByExactlyWhatHappened) {
  auto c = cluster::start(2, 1, {"--policy", "round_robin"});
  auto& p0 = *c->prefill[0];
  auto& p1 = *c->prefill[1];
  auto& d = *c->decode[0];
  auto before = scrape(*c);
  EXPECT_EQ(value(before, "pdlb_requests_in_flight"), 1);  // the scrape itself
  EXPECT_EQ(value(before, "pdlb_build_info{version=\"" PDLB_VERSION "\"}"), 1);

  // A prefill failure: the first pick is prefill[0] (round robin), which answers 500; the decode
  // leg waiting for its KV is stopped; the retry runs on prefill[1] and succeeds.
  post_json(p0, "/sim/fault", {{"fail_status", 500}, {"count", 1}});
  ASSERT_EQ(c->post("/generate", small_request()).status, 200u);
  // Three plain successes and a whole stream.
  for (int i = 0; i < 3; ++i) ASSERT_EQ(c->post("/generate", small_request()).status, 200u);
  auto stream = c->post("/generate", small_request(true, 4));
  ASSERT_EQ(stream.status, 200u);
  ASSERT_TRUE(stream.complete);
  std::size_t events = 0;
  for (auto p = stream.body.find("\n\n"); p != std::string::npos; p = stream.body.find("\n\n", p + 2)) ++events;
  ASSERT_GE(events, 5u) << stream.body;  // four tokens and [DONE]

  // A request is counted as its handler ends, just after the client has its last byte.
  auto mid = scrape_when_idle(*c);
  EXPECT_EQ(value(mid, "pdlb_requests_in_flight"), 1);
  EXPECT_EQ(value(mid, gen("2xx")) - value(before, gen("2xx")), 5);
  EXPECT_EQ(value(mid, gen("5xx")), 0);
  EXPECT_EQ(value(mid, "pdlb_request_duration_seconds_count{route=\"/generate\"}"), 5);
  EXPECT_EQ(value(mid, "pdlb_time_to_first_byte_seconds_count{route=\"/generate\"}"), 5);
  EXPECT_EQ(value(mid, "pdlb_stream_events_total"), static_cast<double>(events));
  EXPECT_EQ(value(mid, "pdlb_retries_total{reason=\"prefill_failed\"}"), 1);
  EXPECT_EQ(value(mid, "pdlb_retries_total{reason=\"decode_failed\"}"), 0);
  EXPECT_EQ(value(mid, "pdlb_cancelled_legs_total{role=\"decode\",reason=\"prefill_failed\"}"), 1);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_errors_total", p0, "prefill", ",kind=\"status\"")), 1);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_errors_total", p1, "prefill", ",kind=\"status\"")), 0);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_errors_total", d, "decode", ",kind=\"status\"")), 0);
  // Six attempts reached each role: the failed one and five good ones.
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_requests_total", p0, "prefill")) +
                value(mid, worker_key("pdlb_worker_requests_total", p1, "prefill")),
            6);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_requests_total", d, "decode")), 6);
  // Every prefill answer is timed (the 500 too); the decode is timed when it answers, and the
  // cancelled leg never did.
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_response_seconds_count", p0, "prefill")) +
                value(mid, worker_key("pdlb_worker_response_seconds_count", p1, "prefill")),
            6);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_response_seconds_count", d, "decode")), 5);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_requests_in_flight", d, "decode")), 0);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_state", p0, "prefill", ",state=\"available\"")), 1);
  EXPECT_EQ(value(mid, worker_key("pdlb_worker_state", p0, "prefill", ",state=\"ejected\"")), 0);
  EXPECT_EQ(value(mid, "pdlb_client_disconnects_total"), 0);

  // A client that leaves mid-stream.
  {
    http_connection conn(c->port());
    conn.send("POST", "/generate", small_request(true, 100000).dump());
    auto head = conn.read_header();
    ASSERT_EQ(head.status, 200u);
    ASSERT_TRUE(conn.read_body_some().has_value());  // its first event: the client saw a byte
    conn.close();
  }
  ASSERT_TRUE(sim_wait(d, "active=0&min_aborted=1", 10s)) << d.stats().dump();
  // pdlb's handler ends right after it closes the decode's connection.
  samples after = scrape_when_idle(*c);
  EXPECT_EQ(value(after, "pdlb_requests_in_flight"), 1);
  EXPECT_EQ(value(after, "pdlb_client_disconnects_total"), 1);
  EXPECT_EQ(value(after, gen("2xx")), 6);  // its status line went out
  EXPECT_EQ(value(after, "pdlb_request_duration_seconds_count{route=\"/generate\"}"), 6);
  EXPECT_EQ(value(after, "pdlb_time_to_first_byte_seconds_count{route=\"/generate\"}"), 6);
  EXPECT_EQ(value(after, worker_key("pdlb_worker_requests_total", d, "decode")), 7);
  EXPECT_EQ(value(after, worker_key("pdlb_worker_response_seconds_count", d, "decode")), 6);
  EXPECT_EQ(value(after, worker_key("pdlb_worker_requests_in_flight", d, "decode")), 0);
  EXPECT_EQ(value(after, worker_key("pdlb_worker_errors_total", d, "decode", ",kind=\"reset\"")), 0);
  EXPECT_GT(value(after, "pdlb_stream_events_total"), static_cast<double>(events));
  // The earlier scrapes counted under "other".
  EXPECT_GE(value(after, "pdlb_requests_total{route=\"other\",status=\"2xx\"}"), 2);
  EXPECT_GT(value(after, "process_resident_memory_bytes"), 0);
  EXPECT_GT(value(after, "process_open_fds"), 0);
  if (have_promtool()) EXPECT_EQ(promtool_check(c->get("/metrics").body), "");
}

}  // namespace
TEST(Metrics, WorkerConnectionsAreSplitIntoIdleAndBusy) {
  auto c = cluster::start(1, 1);
  auto& p = *c->prefill[0];
  auto& d = *c->decode[0];
  auto conns = [&](const samples& s, const sim_worker& w, const char* state) {
    return value(s, "pdlb_worker_connections{worker=\"" + w.url() + "\",state=\"" + state + "\"}");
  };
  ASSERT_EQ(c->post("/generate", small_request()).status, 200u);
  // Done: its two connections are pooled.
  auto done = scrape_when_idle(*c);
  EXPECT_EQ(conns(done, p, "idle"), 1) << "prefill";
  EXPECT_EQ(conns(done, p, "busy"), 0) << "prefill";
  EXPECT_EQ(conns(done, d, "idle"), 1) << "decode";
  EXPECT_EQ(conns(done, d, "busy"), 0) << "decode";

  // A stream in progress holds a decode connection: the pooled one if its request landed on the
  // same server thread, else a new one (the pooled one stays idle in the other thread's pool).
  http_connection conn(c->port());
  conn.send("POST", "/generate", small_request(true, 100000).dump());
  ASSERT_EQ(conn.read_header().status, 200u);
  ASSERT_TRUE(conn.read_body_some().has_value());
  auto during = scrape(*c);
  EXPECT_EQ(conns(during, d, "busy"), 1);
  EXPECT_LE(conns(during, d, "idle"), 1);
  conn.close();
  ASSERT_TRUE(sim_wait(d, "active=0", 10s));
  // The cut stream's connection was closed, not pooled.
  auto after = scrape_when_idle(*c);
  EXPECT_EQ(conns(after, d, "busy"), 0);
  EXPECT_EQ(conns(after, d, "idle"), conns(during, d, "idle"));
}

TEST(Metrics, AMetricsPortServesTheSameScrapeOnAListenerOfItsOwn) {
  auto p = sim_worker::start("prefill");
  auto d = sim_worker::start("decode");
  auto lb = pdlb_process::start({"--prefill", p->url(), "--prefill-bootstrap-ports", std::to_string(p->bootstrap_port()),
                                 "--decode", d->url(), "--metrics-port", "0"});
  ASSERT_NE(lb->metrics_port(), 0) << "the ready file names no metrics port";
  ASSERT_NE(lb->metrics_port(), lb->port());
  ASSERT_EQ(http_request(lb->port(), "POST", "/generate", small_request().dump()).status, 200u);
  auto r = http_request(lb->metrics_port(), "GET", "/metrics");
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  auto s = parse_metrics(r.body);
  EXPECT_EQ(value(s, gen("2xx")), 1) << r.body;
  // Scrapes there are not client traffic: none is in flight or counted.
  EXPECT_EQ(value(s, "pdlb_requests_in_flight"), 0);
  EXPECT_EQ(value(parse_metrics(http_request(lb->metrics_port(), "GET", "/metrics").body),
                  "pdlb_requests_total{route=\"/metrics\",status=\"2xx\"}"),
            0);
  // Only /metrics, only GET; the main port still serves it too.
  auto other = http_request(lb->metrics_port(), "GET", "/health");
  EXPECT_EQ(other.status, 404u);
  EXPECT_TRUE(is_error_body(other.body)) << other.body;
  auto post = http_request(lb->metrics_port(), "POST", "/metrics", "");
  EXPECT_EQ(post.status, 405u);
  EXPECT_EQ(post.header("allow"), "GET");
  EXPECT_EQ(http_request(lb->port(), "GET", "/metrics").status, 200u);
}

TEST(Metrics, AFailedKvHandOffIsCountedAsABootstrapError) {
  // A prefill listed without a bootstrap port: the decode cannot fetch the KV and answers 500 with
  // SGLang's "Decode transfer failed ... KVTransferError" (pdlb-sim says it as SGLang does).
  auto p = sim_worker::start("prefill");
  auto d = sim_worker::start("decode");
  auto lb = pdlb_process::start({"--prefill", p->url(), "none", "--decode", d->url(), "--max-retries", "0"});
  auto r = http_request(lb->port(), "POST", "/generate", small_request().dump());
  EXPECT_EQ(r.status, 500u) << r.body;
  EXPECT_THAT(r.body, ::testing::HasSubstr("KVTransferError"));
  auto s = parse_metrics(http_request(lb->port(), "GET", "/metrics").body);
  EXPECT_EQ(value(s, worker_key("pdlb_worker_errors_total", *d, "decode", ",kind=\"bootstrap\"")), 1);
  EXPECT_EQ(value(s, worker_key("pdlb_worker_errors_total", *d, "decode", ",kind=\"status\"")), 0);
  EXPECT_EQ(value(s, worker_key("pdlb_worker_errors_total", *p, "prefill", ",kind=\"bootstrap\"")), 0);
}

}  // namespace pdlb::test
