// X-Request-Id: the client's id (or a new one) reaches both workers, comes back, and names the
// request in pdlb's log; W3C trace context is forwarded unchanged.
#include "integration/cluster.hpp"

#include <regex>
#include <sstream>

namespace pdlb::test {
namespace {

using namespace std::chrono_literals;

json last_headers(sim_worker& w) { return parse_json(http_request(w.port(), "GET", "/sim/last_headers").body); }

TEST(RequestId, AClientsIdAndTraceContextReachBothWorkersAndTheIdComesBack) {
  auto c = cluster::start(1, 1);
  const std::string traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  for (bool stream : {false, true}) {
    const std::string id = stream ? "client-id-stream" : "client-id-42";
    auto r = c->post("/generate", small_request(stream),
                     {{"X-Request-Id", id}, {"traceparent", traceparent}, {"tracestate", "congo=t61rcWkgMzE"}});
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.header("x-request-id"), id);
    for (sim_worker* w : {c->prefill[0].get(), c->decode[0].get()}) {
      auto h = last_headers(*w);
      EXPECT_EQ(h.value("x-request-id", ""), id) << h.dump();
      EXPECT_EQ(h.value("traceparent", ""), traceparent) << h.dump();
      EXPECT_EQ(h.value("tracestate", ""), "congo=t61rcWkgMzE") << h.dump();
    }
  }
}

TEST(RequestId, OneIsMadeUpWhenAbsentOrUnusableAndEachRequestGetsItsOwn) {
  auto c = cluster::start(1, 1);
  const std::regex generated("[0-9a-f]{32}");
  std::string previous;
  for (const header_list& headers : {header_list{}, header_list{{"X-Request-Id", std::string(200, 'x')}}}) {
    auto r = c->post("/generate", small_request(), headers);
    ASSERT_EQ(r.status, 200u) << r.body;
    const std::string id = r.header("x-request-id");
    EXPECT_TRUE(std::regex_match(id, generated)) << id;
    EXPECT_NE(id, previous);
    previous = id;
    EXPECT_EQ(last_headers(*c->prefill[0]).value("x-request-id", ""), id);
    EXPECT_EQ(last_headers(*c->decode[0]).value("x-request-id", ""), id);
    EXPECT_FALSE(last_headers(*c->decode[0]).contains("traceparent"));
  }
  // Errors of pdlb's own carry it too.
  auto missing = c->get("/no/such/route");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_TRUE(std::regex_match(missing.header("x-request-id"), generated)) << missing.header("x-request-id");
}

TEST(RequestId, AFailedRequestsLogLineNamesItsId) {
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 500}, {"count", 1}});
  auto r = c->post("/generate", small_request(), {{"X-Request-Id", "log-me-7"}});
  EXPECT_EQ(r.status, 500u) << r.body;
  EXPECT_EQ(r.header("x-request-id"), "log-me-7");
  EXPECT_TRUE(c->lb->process().wait_for_line(std::regex("request log-me-7 failed: prefill worker"), 10s))
      << c->lb->process().output();
}

TEST(RequestId, JsonLogLinesCarryTheRequestIdAndTheWorkerAsFields) {
  auto c = cluster::start(1, 1, {"--max-retries", "0", "--log-format", "json"});
  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 500}, {"count", 1}});
  auto r = c->post("/generate", small_request(), {{"X-Request-Id", "json-me-8"}});
  EXPECT_EQ(r.status, 500u) << r.body;
  auto& out = c->lb->process();
  ASSERT_TRUE(out.wait_for_line(std::regex("request json-me-8 failed"), 10s)) << out.output();
  // The line about the failure, as one JSON object with the two fields beside the message.
  std::istringstream lines(out.output());
  std::string line;
  json found;
  while (std::getline(lines, line))
    if (line.find("request json-me-8 failed") != std::string::npos) found = json::parse(line);
  ASSERT_TRUE(found.is_object());
  EXPECT_EQ(found["request_id"], "json-me-8");
  EXPECT_EQ(found["worker"], c->prefill[0]->url());
  EXPECT_EQ(found["level"], "warning");
  // Lines about no request have neither field.
  std::istringstream again(out.output());
  int plain = 0;
  while (std::getline(again, line))
    if (line.find("listening on") != std::string::npos) {
      const json j = json::parse(line);
      EXPECT_FALSE(j.contains("request_id")) << line;
      EXPECT_FALSE(j.contains("worker")) << line;
      ++plain;
    }
  EXPECT_EQ(plain, 1) << out.output();
}

}  // namespace
}  // namespace pdlb::test
