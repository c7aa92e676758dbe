// Workers that fail, come and go: passive ejection, retries on another pair, live membership
// through the admin routes, readiness. pdlb in front of pdlb-sim workers on loopback.
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <thread>

namespace pdlb::test {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

// Sends `n` sequential /generate requests; returns how many did not get a whole 200 answer.
int failed_of(cluster& c, int n, bool stream = false) {
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    json body = {{"text", "hello"}, {"sampling_params", {{"max_new_tokens", 2}}}, {"stream", stream}};
    auto r = c.post("/generate", body);
    const bool whole = r.status == 200 && (!stream || r.body.find("data: [DONE]") != std::string::npos);
    if (!whole) {
      if (failed < 3) ADD_FAILURE() << "request " << i << ": " << r.status << " " << r.body.substr(0, 300);
      ++failed;
    }
  }
  return failed;
}

json worker_entry(cluster& c, const std::string& url) {
  auto list = parse_json(c.get("/workers").body);
  for (auto& w : list["workers"])
    if (w["url"] == url) return w;
  return json();
}

class DeadDecodeOfTwo : public ::testing::TestWithParam<const char*> {};

TEST_P(DeadDecodeOfTwo, RefusingConnectionsFailsNoneOfAThousandRequests) {
  auto c = cluster::start(2, 2, {"--policy", GetParam()});
  post_json(*c->decode[1], "/sim/fault", {{"refuse_connections", true}});
  EXPECT_EQ(failed_of(*c, 1000), 0);
  // A refused connection ejects at once: the dead worker was tried about once.
  auto w = worker_entry(*c, c->decode[1]->url());
  EXPECT_EQ(w["state"], "ejected") << w.dump();
  EXPECT_LE(w["failures"].get<int>(), 3) << w.dump();
  EXPECT_GE(parse_json(c->get("/pdlb/stats").body)["retries"].get<int>(), 1);
}

TEST_P(DeadDecodeOfTwo, AnsweringFiveHundredThreeFailsNoneOfAThousandRequests) {
  auto c = cluster::start(2, 2, {"--policy", GetParam()});
  post_json(*c->decode[1], "/sim/fault", {{"fail_status", 503}});
  EXPECT_EQ(failed_of(*c, 1000), 0);
  auto w = worker_entry(*c, c->decode[1]->url());
  EXPECT_EQ(w["state"], "ejected") << w.dump();
  // Three in a row eject it for 10 s: within this test it failed only a handful of requests.
  EXPECT_LE(w["failures"].get<int>(), 6) << w.dump();
}

TEST_P(DeadDecodeOfTwo, NeverAnsweringFailsNoneOfAThousandRequestsWithATwoSecondTimeout) {
  auto c = cluster::start(2, 2, {"--policy", GetParam(), "--timeout", "2"});
  post_json(*c->decode[1], "/sim/fault", {{"stall", true}});
  EXPECT_EQ(failed_of(*c, 1000), 0);
  auto w = worker_entry(*c, c->decode[1]->url());
  EXPECT_EQ(w["state"], "ejected") << w.dump();
  post_json(*c->decode[1], "/sim/fault", json::object());
}

INSTANTIATE_TEST_SUITE_P(Policies, DeadDecodeOfTwo, ::testing::Values("random", "po2"));

TEST(Failover, AStreamIsRetriedOnAnotherPairWhenItsDecodeIsDown) {
  auto c = cluster::start(1, 2, {"--policy", "round_robin"});
  post_json(*c->decode[0], "/sim/fault", {{"refuse_connections", true}});
  EXPECT_EQ(failed_of(*c, 20, true), 0);
}

TEST(Failover, APrefillAnsweringAnErrorIsRetriedOnTheOtherPrefill) {
  auto c = cluster::start(2, 1, {"--policy", "round_robin"});
  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 500}, {"count", 1}});
  // The first attempt goes to prefill[0] (round robin) and fails; the retry avoids it. Its decode
  // fetched the KV of the room the retry sent to prefill[1]: the answer is whole.
  EXPECT_EQ(failed_of(*c, 1), 0);
  EXPECT_EQ(c->prefill[0]->stats()["faults_injected"], 1);
  EXPECT_EQ(c->prefill[1]->stats()["finished"], 1);
  EXPECT_EQ(parse_json(c->get("/pdlb/stats").body)["retries"], 1);
  expect_clean_and_serving(*c);
}

TEST(Failover, AFourHundredIsNeverRetriedNorCounted) {
  auto c = cluster::start(1, 2, {"--policy", "round_robin"});
  post_json(*c->decode[0], "/sim/fault", {{"fail_status", 400}});
  post_json(*c->decode[1], "/sim/fault", {{"fail_status", 400}});
  for (int i = 0; i < 4; ++i) EXPECT_EQ(c->post("/generate", {{"text", "x"}}).status, 400u);
  auto stats = parse_json(c->get("/pdlb/stats").body);
  EXPECT_EQ(stats["retries"], 0);
  for (auto& w : stats["decode"]) EXPECT_EQ(w["failures"], 0) << stats.dump();
  auto list = parse_json(c->get("/workers").body);
  for (auto& w : list["workers"]) EXPECT_EQ(w["state"], "available") << list.dump();
}

TEST(Failover, AStreamCutAfterTheClientGotBytesIsNotRetried) {
  auto c = cluster::start(1, 2, {"--policy", "round_robin"});
  post_json(*c->decode[0], "/sim/fault", {{"die_after_tokens", 2}});
  post_json(*c->decode[1], "/sim/fault", {{"die_after_tokens", 2}});
  auto r = c->post("/generate", {{"text", "x"}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 8}}}});
  ASSERT_EQ(r.status, 200u);
  auto events = sse_data(r.body);
  ASSERT_EQ(events.size(), 3u) << r.body;  // two tokens, then the error event: no token twice
  EXPECT_TRUE(is_error_body(events.back())) << r.body;
  EXPECT_EQ(parse_json(c->get("/pdlb/stats").body)["retries"], 0);
}

TEST(Failover, AnEjectedWorkerRestartedOnItsPortGetsRequestsAgainAfterTheFailTimeout) {
  auto c = cluster::start(1, 2, {"--fail-timeout", "1", "--policy", "round_robin"});
  const auto port = c->decode[1]->port();
  c->decode[1].reset();  // killed: its port refuses connections
  EXPECT_EQ(failed_of(*c, 20), 0);
  EXPECT_EQ(worker_entry(*c, "http://127.0.0.1:" + std::to_string(port))["state"], "ejected");
  auto args = fast_sim_args();
  args.insert(args.end(), {"--port", std::to_string(port)});
  c->decode[1] = sim_worker::start("decode", args);
  const auto restarted = std::chrono::steady_clock::now();
  // Requests keep flowing (none may fail) until the restarted worker has served one.
  int failed = 0;
  while (c->decode[1]->stats()["finished"].get<int>() == 0 &&
         std::chrono::steady_clock::now() - restarted < 5s)
    failed += failed_of(*c, 5);
  EXPECT_EQ(failed, 0);
  EXPECT_GT(c->decode[1]->stats()["finished"].get<int>(), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - restarted, 2500ms) << "not back within --fail-timeout + 1 s";
  EXPECT_EQ(worker_entry(*c, c->decode[1]->url())["state"], "available");
}

TEST(Failover, WithEveryDecodeEjectedPdlbStillTriesThemInPanicMode) {
  auto c = cluster::start(1, 1, {"--max-retries", "0"});
  post_json(*c->decode[0], "/sim/fault", {{"fail_status", 503}, {"count", 3}});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(c->post("/generate", {{"text", "x"}}).status, 503u);
  EXPECT_EQ(worker_entry(*c, c->decode[0]->url())["state"], "ejected");
  // Ejected, but the only decode: it is used anyway, and it works again.
  EXPECT_EQ(c->post("/generate", {{"text", "x"}}).status, 200u);
  EXPECT_THAT(c->lb->process().output(), HasSubstr("panic mode"));
}

// --- membership -------------------------------------------------------------------------------

TEST(Membership, StartsWithNoWorkersAndServesOnceTheyAreAdded) {
  auto p = sim_worker::start("prefill", fast_sim_args());
  auto d = sim_worker::start("decode", fast_sim_args());
  auto lb = pdlb_process::start({});
  auto r = http_request(lb->port(), "POST", "/generate", R"({"text":"x"})");
  EXPECT_EQ(r.status, 503u) << r.body;
  EXPECT_TRUE(is_error_body(r.body));
  EXPECT_EQ(http_request(lb->port(), "GET", "/readiness").status, 503u);

  auto add = http_request(lb->port(), "POST", "/workers",
                          json({{"url", p->url()}, {"worker_type", "prefill"},
                                {"bootstrap_port", p->bootstrap_port()}}).dump());
  ASSERT_EQ(add.status, 200u) << add.body;
  EXPECT_EQ(parse_json(add.body)["bootstrap_port"], p->bootstrap_port());
  // The SGLang router's older route.
  auto add2 = http_request(lb->port(), "POST", "/add_worker?url=" + d->url() + "&worker_type=decode");
  ASSERT_EQ(add2.status, 200u) << add2.body;
  EXPECT_EQ(http_request(lb->port(), "GET", "/readiness").status, 200u);
  EXPECT_EQ(http_request(lb->port(), "POST", "/generate", R"({"text":"x"})").status, 200u);
  auto list = parse_json(http_request(lb->port(), "GET", "/list_workers").body);
  EXPECT_EQ(list["urls"].size(), 2u) << list.dump();
}

TEST(Membership, BadAddsGetClearErrors) {
  auto c = cluster::start(1, 1);
  auto post = [&](const std::string& body) { return http_request(c->port(), "POST", "/workers", body); };
  auto r = post("not json");
  EXPECT_EQ(r.status, 400u);
  EXPECT_TRUE(is_error_body(r.body));
  r = post(R"({"url":"ftp://x:1","worker_type":"decode"})");
  EXPECT_EQ(r.status, 400u);
  EXPECT_THAT(r.body, HasSubstr("only http://"));
  r = post(R"({"url":"http://127.0.0.1:9","worker_type":"encode"})");
  EXPECT_EQ(r.status, 400u);
  EXPECT_THAT(r.body, HasSubstr("worker_type"));
  r = post(R"({"url":"http://127.0.0.1:9","worker_type":"prefill","bootstrap_port":"x"})");
  EXPECT_EQ(r.status, 400u);
  r = post(json({{"url", c->decode[0]->url()}, {"worker_type", "decode"}}).dump());
  EXPECT_EQ(r.status, 409u);
  EXPECT_THAT(r.body, HasSubstr("already listed"));
  r = http_request(c->port(), "DELETE", "/workers/http%3A%2F%2F127.0.0.1%3A9");
  EXPECT_EQ(r.status, 404u);
  r = http_request(c->port(), "PUT", "/workers");
  EXPECT_EQ(r.status, 405u);
  expect_clean_and_serving(*c);
}

TEST(Membership, WorkerRoutesNeedTheAdminKeyWhenOneIsSet) {
  auto c = cluster::start(1, 1, {"--admin-api-key", "sesame"});
  EXPECT_EQ(c->get("/workers").status, 401u);
  auto r = http_request(c->port(), "GET", "/workers", {}, {{"Authorization", "Bearer sesame"}});
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(parse_json(r.body)["workers"].size(), 2u);
}

TEST(Membership, ARemovedWorkerFinishesItsStreamAndGetsNoNewRequest) {
  auto c = cluster::start(1, 2, {"--policy", "round_robin"});
  post_json(*c->decode[1], "/slow_down", {{"forward_sleep_time", 0.02}});
  ASSERT_EQ(failed_of(*c, 1), 0);  // to decode[0]: round robin sends the next one to decode[1]
  // A stream in flight on decode[1].
  http_connection conn(c->port());
  conn.send("POST", "/generate",
            json({{"text", "x"}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 40}}}}).dump());
  ASSERT_EQ(conn.read_header().status, 200u);
  ASSERT_TRUE(sim_wait(*c->decode[1], "running=1", 10s)) << c->decode[1]->stats().dump();
  std::string url = c->decode[1]->url();
  std::string encoded;
  for (char ch : url) encoded += (ch == ':' || ch == '/') ? (ch == ':' ? "%3A" : "%2F") : std::string(1, ch);
  auto del = http_request(c->port(), "DELETE", "/workers/" + encoded);
  ASSERT_EQ(del.status, 200u) << del.body;
  EXPECT_EQ(worker_entry(*c, url)["state"], "draining");
  const int received = c->decode[1]->stats()["received"].get<int>();
  EXPECT_EQ(failed_of(*c, 10), 0);
  EXPECT_EQ(c->decode[1]->stats()["received"].get<int>(), received) << "a draining worker got a request";
  // The stream in flight finishes whole.
  std::string body;
  while (auto piece = conn.read_body_some()) body += *piece;
  EXPECT_THAT(body, HasSubstr("data: [DONE]"));
  // And then the worker leaves the list, at pdlb's next sweep (its own timer): poll, bounded.
  for (int i = 0; i < 100 && !worker_entry(*c, url).is_null(); ++i) std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(worker_entry(*c, url).is_null());
}

}  // namespace
}  // namespace pdlb::test

namespace pdlb::test {
namespace {

TEST(Membership, OneServerMayBeBothAPrefillAndADecodeWorkerButNotTwiceInARole) {
  auto lb = pdlb_process::start({});
  auto add = [&](const char* type) {
    return http_request(lb->port(), "POST", "/workers",
                        json({{"url", "http://127.0.0.1:9"}, {"worker_type", type}}).dump());
  };
  EXPECT_EQ(add("prefill").status, 200u);
  EXPECT_EQ(add("decode").status, 200u);
  EXPECT_EQ(add("decode").status, 409u);
  EXPECT_EQ(parse_json(http_request(lb->port(), "GET", "/workers").body)["workers"].size(), 2u);
}

}  // namespace
}  // namespace pdlb::test
