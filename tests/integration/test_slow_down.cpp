// POST /slow_down through pdlb: SGLang's forward_sleep_time (SGLang issue 6017, the seed's decode
// test) reaches every decode worker at once, or the listed ones, or the prefill workers; requests
// then pile up on the slowed workers until it is cleared.
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <csignal>
#include <thread>

namespace pdlb::test {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

double sleep_time(sim_worker& w) { return w.stats()["forward_sleep_time"].get<double>(); }

std::string error_message(const http_response& r) {
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.contains("error")) return "";
  return j["error"].value("message", "");
}

TEST(SlowDown, ReachesEveryDecodeWorkerAndRequestsQueueUntilCleared) {
  auto c = cluster::start(1, 2, {"--policy", "round_robin"});
  auto r = c->post("/slow_down", {{"forward_sleep_time", 30.0}});
  ASSERT_EQ(r.status, 200u) << r.body;
  auto j = parse_json(r.body);
  ASSERT_EQ(j["workers"].size(), 2u) << r.body;
  for (auto& w : j["workers"]) EXPECT_EQ(w["status"], 200);
  EXPECT_EQ(sleep_time(*c->decode[0]), 30.0);
  EXPECT_EQ(sleep_time(*c->decode[1]), 30.0);
  EXPECT_EQ(sleep_time(*c->prefill[0]), 0.0) << "the prefill worker was slowed too";

  // Four requests, two per decode worker (round robin). The first one on each worker joins the
  // batch, whose step then sleeps 30 s; the second one, sent once the first runs, holds its KV and
  // waits in the queue.
  std::vector<http_response> answers(4);
  std::vector<std::thread> clients;
  auto send = [&](int i) {
    clients.emplace_back([&, i] {
      answers[i] = http_request(c->port(), "POST", "/generate",
                                json{{"text", "queued " + std::to_string(i)},
                                     {"sampling_params", {{"max_new_tokens", 4}}}}
                                    .dump(),
                                {}, 60s);
    });
  };
  send(0);
  send(1);
  for (auto& d : c->decode) d->wait("running=1", 20s);
  send(2);
  send(3);
  for (auto& d : c->decode) {
    auto s = d->try_wait("queued=1&running=1", 20s);
    EXPECT_TRUE(s.has_value()) << "requests did not queue on " << d->url() << ": " << d->stats().dump();
  }
  EXPECT_EQ(c->decode[0]->stats()["finished"], 0);
  EXPECT_EQ(c->decode[1]->stats()["finished"], 0);

  auto clear = c->post("/slow_down", {{"forward_sleep_time", nullptr}});
  ASSERT_EQ(clear.status, 200u) << clear.body;
  EXPECT_EQ(sleep_time(*c->decode[0]), 0.0);
  EXPECT_EQ(sleep_time(*c->decode[1]), 0.0);
  for (auto& t : clients) t.join();
  for (auto& a : answers) EXPECT_EQ(a.status, 200u) << a.body << a.error;
  for (auto& d : c->decode) d->wait("active=0&finished=2");
}

TEST(SlowDown, RoleAndWorkerListChooseTheWorkers) {
  auto c = cluster::start(2, 2);
  auto r = c->post("/slow_down",
                   {{"forward_sleep_time", 1.5}, {"role", "prefill"}, {"workers", {c->prefill[1]->url()}}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(sleep_time(*c->prefill[1]), 1.5);
  EXPECT_EQ(sleep_time(*c->prefill[0]), 0.0);
  EXPECT_EQ(sleep_time(*c->decode[0]), 0.0);
  EXPECT_EQ(sleep_time(*c->decode[1]), 0.0);

  r = c->post("/slow_down", {{"forward_sleep_time", 2}, {"workers", {c->decode[0]->url() + "/"}}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(sleep_time(*c->decode[0]), 2.0);
  EXPECT_EQ(sleep_time(*c->decode[1]), 0.0);

  r = c->post("/slow_down", {{"forward_sleep_time", nullptr}, {"role", "prefill"}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(parse_json(r.body)["workers"].size(), 2u);
  EXPECT_EQ(sleep_time(*c->prefill[1]), 0.0);
  EXPECT_EQ(sleep_time(*c->decode[0]), 2.0) << "clearing the prefill workers touched a decode worker";
}

TEST(SlowDown, BadInputGets400NamingTheProblemAndNoWorkerIsTouched) {
  auto c = cluster::start(1, 1);
  struct bad_case {
    std::string body;
    std::string says;
  };
  std::vector<bad_case> cases = {
      {"not json", "JSON object"},
      {"[1]", "JSON object"},
      {"{}", "forward_sleep_time is required"},
      {R"({"forward_sleep_time": "90"})", "number of seconds"},
      {R"({"forward_sleep_time": -1})", "number of seconds"},
      {R"({"forward_sleep_time": 1, "role": "both"})", "role must be"},
      {R"({"forward_sleep_time": 1, "workers": []})", "non-empty list"},
      {R"({"forward_sleep_time": 1, "workers": [7]})", "URL strings"},
      {R"({"forward_sleep_time": 1, "workers": ["http://127.0.0.1:1"]})", "is not a decode worker"},
      {R"({"forward_sleep_time": 1, "workers": [")" + c->decode[0]->url() + R"("], "role": "prefill"})",
       "is not a prefill worker"},
      {R"({"forward_sleep": 1})", "unknown field \"forward_sleep\""},
  };
  for (auto& bc : cases) {
    auto r = c->post_raw("/slow_down", bc.body);
    EXPECT_EQ(r.status, 400u) << bc.body << " -> " << r.body;
    EXPECT_TRUE(is_error_body(r.body)) << r.body;
    EXPECT_THAT(error_message(r), HasSubstr(bc.says)) << bc.body;
  }
  EXPECT_EQ(sleep_time(*c->decode[0]), 0.0);
  auto get = c->get("/slow_down");
  EXPECT_EQ(get.status, 405u);
  EXPECT_EQ(get.header("allow"), "POST");
}

TEST(SlowDown, AWorkerThatFailsIsNamedIn502AndTheOthersAreStillSet) {
  auto c = cluster::start(1, 2);
  c->decode[1]->process().signal(SIGKILL);
  ASSERT_TRUE(c->decode[1]->process().wait_exit(10s).has_value());
  auto r = c->post("/slow_down", {{"forward_sleep_time", 3}});
  EXPECT_EQ(r.status, 502u) << r.body;
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  EXPECT_THAT(error_message(r), HasSubstr(c->decode[1]->url()));
  EXPECT_THAT(error_message(r), ::testing::Not(HasSubstr(c->decode[0]->url())));
  EXPECT_EQ(sleep_time(*c->decode[0]), 3.0);
}

TEST(SlowDown, NeedsTheAdminKeyWhenOneIsSet) {
  auto c = cluster::start(1, 1, {"--api-key", "sk-inference", "--admin-api-key", "sk-admin"});
  EXPECT_EQ(c->post("/slow_down", {{"forward_sleep_time", 1}}).status, 401u);
  EXPECT_EQ(c->post("/slow_down", {{"forward_sleep_time", 1}}, {{"Authorization", "Bearer sk-inference"}}).status,
            401u);
  EXPECT_EQ(sleep_time(*c->decode[0]), 0.0);
  auto ok = c->post("/slow_down", {{"forward_sleep_time", 1}}, {{"Authorization", "Bearer sk-admin"}});
  EXPECT_EQ(ok.status, 200u) << ok.body;
  EXPECT_EQ(sleep_time(*c->decode[0]), 1.0);
}

}  // namespace
}  // namespace pdlb::test
