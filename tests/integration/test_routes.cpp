// pdlb in front of pdlb-sim workers: every endpoint and the request/response rules of the core
// issue, on loopback.
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <atomic>
#include <mutex>
#include <thread>

namespace pdlb::test {
namespace {

using ::testing::HasSubstr;

class Routes : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { c_ = cluster::start(1, 1).release(); }
  static void TearDownTestSuite() {
    delete c_;
    c_ = nullptr;
  }
  static cluster* c_;
};
cluster* Routes::c_ = nullptr;

TEST_F(Routes, GenerateGoesThroughPrefillAndDecodeWithAWorkingHandshake) {
  auto before_p = c_->prefill[0]->stats();
  auto before_d = c_->decode[0]->stats();
  auto r = c_->post("/generate", {{"text", "The capital of France is"},
                                  {"sampling_params", {{"max_new_tokens", 5}, {"temperature", 0}}}});
  ASSERT_EQ(r.status, 200u) << r.body << r.error;
  EXPECT_THAT(r.header("content-type"), HasSubstr("application/json"));
  auto j = parse_json(r.body);
  ASSERT_TRUE(j.is_object()) << r.body;
  EXPECT_TRUE(j["text"].is_string());
  EXPECT_EQ(j["meta_info"]["completion_tokens"], 5);
  // The decode worker only finishes after fetching the room from the prefill worker's bootstrap
  // server, so a finished decode proves bootstrap_host, bootstrap_port and bootstrap_room were right.
  auto p = c_->prefill[0]->stats();
  auto d = c_->decode[0]->stats();
  EXPECT_EQ(p["received"].get<int>() - before_p["received"].get<int>(), 1);
  EXPECT_EQ(d["finished"].get<int>() - before_d["finished"].get<int>(), 1);
  EXPECT_EQ(d["failed"], before_d["failed"]);
}

TEST_F(Routes, BatchOfTextsGetsOneRoomPerItem) {
  auto r = c_->post("/generate", {{"text", {"first prompt", "second prompt", "third"}},
                                  {"sampling_params", {{"max_new_tokens", 3}}}});
  ASSERT_EQ(r.status, 200u) << r.body;
  auto j = parse_json(r.body);
  ASSERT_TRUE(j.is_array()) << r.body;
  ASSERT_EQ(j.size(), 3u);
  for (auto& item : j) EXPECT_EQ(item["meta_info"]["completion_tokens"], 3);
}

TEST_F(Routes, BatchOfInputIdsWorks) {
  auto r = c_->post("/generate", {{"input_ids", {{1, 2, 3}, {4, 5}}}, {"sampling_params", {{"max_new_tokens", 2}}}});
  ASSERT_EQ(r.status, 200u) << r.body;
  auto j = parse_json(r.body);
  ASSERT_TRUE(j.is_array());
  EXPECT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["meta_info"]["prompt_tokens"], 3);
  EXPECT_EQ(j[1]["meta_info"]["prompt_tokens"], 2);
}

TEST_F(Routes, StreamRelaysEveryDecodeEventAndDone) {
  auto r = c_->post("/generate", {{"text", "stream me"}, {"stream", true},
                                  {"sampling_params", {{"max_new_tokens", 6}}}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_THAT(r.header("content-type"), HasSubstr("text/event-stream"));
  EXPECT_TRUE(r.complete);
  auto events = sse_data(r.body);
  ASSERT_GE(events.size(), 2u) << r.body;
  EXPECT_EQ(events.back(), "[DONE]");
  auto last = parse_json(events[events.size() - 2]);
  EXPECT_EQ(last["meta_info"]["completion_tokens"], 6);
}

TEST_F(Routes, StreamEventsArriveBeforeTheDecodeFinishes) {
  // A slowed decode worker emits one token per step: the first event must reach the client while
  // the decode is still running, i.e. pdlb does not buffer the stream.
  post_json(*c_->decode[0], "/slow_down", {{"forward_sleep_time", 0.2}});
  http_connection conn(c_->port());
  conn.send("POST", "/generate", json{{"text", "x"}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 20}}}}.dump());
  auto head = conn.read_header();
  ASSERT_EQ(head.status, 200u) << head.error;
  std::string got;
  while (got.find("\n\n") == std::string::npos) {
    auto piece = conn.read_body_some();
    ASSERT_TRUE(piece.has_value());
    got += *piece;
  }
  auto d = c_->decode[0]->stats();
  EXPECT_GE(d["running"].get<int>(), 1) << "decode already finished when the first event arrived";
  post_json(*c_->decode[0], "/slow_down", {{"forward_sleep_time", nullptr}});
  std::string rest;
  while (auto piece = conn.read_body_some()) rest += *piece;
  EXPECT_THAT(got + rest, HasSubstr("[DONE]"));
}

TEST_F(Routes, OpenAiCompletionsNonStreamAndStream) {
  auto r = c_->post("/v1/completions", {{"model", "m"}, {"prompt", "hello"}, {"max_tokens", 4}});
  ASSERT_EQ(r.status, 200u) << r.body;
  auto j = parse_json(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  ASSERT_TRUE(j["choices"].is_array());
  auto s = c_->post("/v1/completions", {{"model", "m"}, {"prompt", "hello"}, {"max_tokens", 4}, {"stream", true}});
  ASSERT_EQ(s.status, 200u);
  auto events = sse_data(s.body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST_F(Routes, OpenAiChatCompletionsNonStreamAndStream) {
  json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi there"}}}}, {"max_tokens", 3}};
  auto r = c_->post("/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200u) << r.body;
  auto j = parse_json(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string());
  body["stream"] = true;
  auto s = c_->post("/v1/chat/completions", body);
  ASSERT_EQ(s.status, 200u);
  auto events = sse_data(s.body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(parse_json(events[0])["object"], "chat.completion.chunk");
}

TEST_F(Routes, ReturnLogprobMergesPrefillInputLogprobsFirst) {
  json body = {{"input_ids", {11, 12, 13, 14}}, {"return_logprob", true}, {"sampling_params", {{"max_new_tokens", 2}}}};
  auto r = c_->post("/generate", body);
  ASSERT_EQ(r.status, 200u) << r.body;
  auto merged = parse_json(r.body)["meta_info"]["input_token_logprobs"];
  // What each worker returns on its own, for the same input:
  auto direct_p = parse_json(http_request(c_->prefill[0]->port(), "POST", "/generate",
                                          json{{"input_ids", {11, 12, 13, 14}}, {"return_logprob", true},
                                               {"sampling_params", {{"max_new_tokens", 2}}},
                                               {"bootstrap_host", "127.0.0.1"},
                                               {"bootstrap_port", c_->prefill[0]->bootstrap_port()},
                                               {"bootstrap_room", 42}}.dump()).body);
  auto prefill_list = direct_p["meta_info"]["input_token_logprobs"];
  ASSERT_TRUE(prefill_list.is_array());
  ASSERT_TRUE(merged.is_array()) << r.body;
  ASSERT_GE(merged.size(), prefill_list.size());
  for (std::size_t i = 0; i < prefill_list.size(); ++i) EXPECT_EQ(merged[i], prefill_list[i]) << i;
  // Token ids of the merged input list are the prompt's, in order.
  EXPECT_EQ(merged[0][1], 11);
  EXPECT_EQ(merged[3][1], 14);
}

TEST_F(Routes, ReturnLogprobMergesPerItemOfABatch) {
  json body = {{"input_ids", {{1, 2, 3}, {7, 8}}}, {"return_logprob", true}, {"sampling_params", {{"max_new_tokens", 1}}}};
  auto r = c_->post("/generate", body);
  ASSERT_EQ(r.status, 200u) << r.body;
  auto j = parse_json(r.body);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2u);
  auto a = j[0]["meta_info"]["input_token_logprobs"];
  auto b = j[1]["meta_info"]["input_token_logprobs"];
  ASSERT_GE(a.size(), 3u) << r.body;
  ASSERT_GE(b.size(), 2u) << r.body;
  EXPECT_EQ(a[0][1], 1);
  EXPECT_EQ(a[2][1], 3);
  EXPECT_EQ(b[0][1], 7);
  EXPECT_EQ(b[1][1], 8);
}

TEST_F(Routes, ReturnLogprobStreamMergesIntoEveryEvent) {
  json body = {{"input_ids", {5, 6, 7}}, {"return_logprob", true}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 3}}}};
  auto r = c_->post("/generate", body);
  ASSERT_EQ(r.status, 200u) << r.body;
  auto events = sse_data(r.body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    auto e = parse_json(events[i]);
    auto list = e["meta_info"]["input_token_logprobs"];
    ASSERT_TRUE(list.is_array()) << events[i];
    ASSERT_GE(list.size(), 3u) << events[i];
    EXPECT_EQ(list[0][1], 5);
    EXPECT_EQ(list[2][1], 7);
  }
}

TEST_F(Routes, BodyWithBigNumbersAndNestingIsForwardedWithTheUnicodePromptUnchanged) {
  // The sim echoes nothing, but its output is a deterministic function of the prompt: the same
  // prompt sent directly and through pdlb gives the same text only if it arrived unchanged.
  std::string prompt = "héllo wörld ✓ 你好 \"quoted\" \\ back";
  std::string raw = R"({"text":)" + json(prompt).dump() +
                    R"(,"sampling_params":{"max_new_tokens":4,"temperature":0.1e-7},"big":123456789012345678901234567890,"nested":{"a":[1,{"b":[2.5e10]}]}})";
  auto via_lb = c_->post_raw("/generate", raw);
  ASSERT_EQ(via_lb.status, 200u) << via_lb.body;
  json direct_body = json::parse(raw);
  direct_body.erase("big");
  direct_body["bootstrap_host"] = "127.0.0.1";
  direct_body["bootstrap_port"] = c_->prefill[0]->bootstrap_port();
  direct_body["bootstrap_room"] = 7;
  auto direct_prefill = http_request(c_->prefill[0]->port(), "POST", "/generate", direct_body.dump());
  auto direct = http_request(c_->decode[0]->port(), "POST", "/generate", direct_body.dump());
  ASSERT_EQ(direct.status, 200u) << direct.body;
  EXPECT_EQ(parse_json(via_lb.body)["text"], parse_json(direct.body)["text"]);
}

TEST_F(Routes, HealthIs200) {
  auto r = c_->get("/health");
  EXPECT_EQ(r.status, 200u);
}

TEST_F(Routes, HealthGenerateIs200WhenEveryWorkerIsHealthy) {
  auto r = c_->get("/health_generate");
  EXPECT_EQ(r.status, 200u) << r.body;
}

TEST_F(Routes, FlushCacheAndProfilingAreForwardedToEveryWorker) {
  for (const char* path : {"/flush_cache", "/start_profile", "/stop_profile"}) {
    auto r = c_->post_raw(path, "{}");
    EXPECT_EQ(r.status, 200u) << path << " " << r.body;
  }
  auto r = c_->post("/abort_request", {{"rid", "nonexistent"}});
  EXPECT_EQ(r.status, 200u) << r.body;
}

TEST_F(Routes, GetServerInfoListsEveryWorkerAndDecodeInternalStates) {
  auto r = c_->get("/get_server_info");
  ASSERT_EQ(r.status, 200u) << r.body;
  auto j = parse_json(r.body);
  ASSERT_EQ(j["prefill"].size(), 1u);
  ASSERT_EQ(j["decode"].size(), 1u);
  EXPECT_TRUE(j["decode"][0]["internal_states"][0].contains("last_gen_throughput"));
  ASSERT_TRUE(j["internal_states"].is_array());
  EXPECT_EQ(j["internal_states"], j["decode"][0]["internal_states"]);
}

TEST_F(Routes, ModelsAndModelInfoComeFromThePrefillWorker) {
  auto m = c_->get("/v1/models");
  ASSERT_EQ(m.status, 200u) << m.body;
  EXPECT_EQ(parse_json(m.body), parse_json(http_request(c_->prefill[0]->port(), "GET", "/v1/models").body));
  auto i = c_->get("/get_model_info");
  ASSERT_EQ(i.status, 200u) << i.body;
  EXPECT_TRUE(parse_json(i.body).contains("model_path"));
}

TEST_F(Routes, UnknownPathIs404Json) {
  auto r = c_->get("/nope");
  EXPECT_EQ(r.status, 404u);
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
}

TEST_F(Routes, WrongMethodIs405JsonWithAllow) {
  auto r = c_->get("/generate");
  EXPECT_EQ(r.status, 405u);
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  EXPECT_EQ(r.header("allow"), "POST");
  auto h = http_request(c_->port(), "POST", "/health", "{}");
  EXPECT_EQ(h.status, 405u);
}

TEST_F(Routes, MalformedJsonIs400AndNothingIsForwarded) {
  auto before = c_->prefill[0]->stats()["received"].get<int>();
  auto before_d = c_->decode[0]->stats()["received"].get<int>();
  for (const char* bad : {"{\"text\": \"x\"", "not json", "[1,2]", "\"text\"", "{\"text\":5}",
                          "{\"input_ids\":\"x\"}", "{\"text\":\"a\",\"stream\":\"yes\"}", "{\"text\":[]}", ""}) {
    auto r = c_->post_raw("/generate", bad);
    EXPECT_EQ(r.status, 400u) << bad << " -> " << r.body;
    EXPECT_TRUE(is_error_body(r.body)) << r.body;
  }
  EXPECT_EQ(c_->prefill[0]->stats()["received"].get<int>(), before);
  EXPECT_EQ(c_->decode[0]->stats()["received"].get<int>(), before_d);
}

TEST_F(Routes, KeepAliveConnectionServesManyRequests) {
  http_connection conn(c_->port());
  for (int i = 0; i < 20; ++i) {
    auto r = conn.request("POST", "/generate", json{{"text", "k"}, {"sampling_params", {{"max_new_tokens", 1}}}}.dump());
    ASSERT_EQ(r.status, 200u) << i << r.error;
  }
}

TEST(RoutesAlone, NoWorkersGives503) {
  auto lb = pdlb_process::start({});
  auto r = http_request(lb->port(), "POST", "/generate", R"({"text":"x"})");
  EXPECT_EQ(r.status, 503u);
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
}

TEST(RoutesAlone, BodyOverMaxBodySizeIs413) {
  auto c = cluster::start(1, 1, {"--max-body-size", "1000"});
  std::string big = R"({"text":")" + std::string(2000, 'a') + R"("})";
  auto r = c->post_raw("/generate", big);
  EXPECT_EQ(r.status, 413u);
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  EXPECT_EQ(c->prefill[0]->stats()["received"], 0);
  auto ok = c->post("/generate", {{"text", "small"}, {"sampling_params", {{"max_new_tokens", 1}}}});
  EXPECT_EQ(ok.status, 200u);
}

TEST(RoutesAlone, HealthGenerateIs503NamingADeadWorker) {
  auto c = cluster::start(1, 1);
  std::string dead_url = c->decode[0]->url();
  c->decode.clear();  // stops the decode worker
  c->lb.reset();
  c->start_lb({"--decode", dead_url});
  auto r = c->get("/health_generate");
  EXPECT_EQ(r.status, 503u);
  EXPECT_THAT(r.body, HasSubstr(dead_url));
  auto f = c->post_raw("/flush_cache", "");
  EXPECT_EQ(f.status, 502u);
  EXPECT_THAT(f.body, HasSubstr(dead_url));
}

TEST(RoutesAlone, RoundRobinAlternatesDecodeWorkers) {
  auto c = cluster::start(1, 2, {"--policy", "round_robin"});
  for (int i = 0; i < 6; ++i)
    ASSERT_EQ(c->post("/generate", {{"text", "rr"}, {"sampling_params", {{"max_new_tokens", 1}}}}).status, 200u);
  EXPECT_EQ(c->decode[0]->stats()["finished"], 3);
  EXPECT_EQ(c->decode[1]->stats()["finished"], 3);
}

TEST(RoutesAlone, Po2AvoidsTheBusyDecodeWorker) {
  // Decode 0 is slowed and holds a long request; po2 must send the next ones to decode 1.
  auto c = cluster::start(1, 2, {"--policy", "po2"});
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 5}});
  post_json(*c->decode[1], "/slow_down", {{"forward_sleep_time", 5}});
  http_connection busy(c->port());
  busy.send("POST", "/generate", json{{"text", "long"}, {"sampling_params", {{"max_new_tokens", 1000}}}}.dump());
  // Find which worker took it: each round waits (on an event) briefly on worker 0, then checks both.
  int busy_worker = -1;
  for (int round = 0; round < 100 && busy_worker < 0; ++round) {
    for (int i = 0; i < 2 && busy_worker < 0; ++i)
      if (c->decode[i]->stats()["received"].get<int>() > 0) busy_worker = i;
    if (busy_worker < 0) sim_wait(*c->decode[0], "min_received=1", std::chrono::milliseconds(100));
  }
  ASSERT_GE(busy_worker, 0);
  int idle_worker = 1 - busy_worker;
  post_json(*c->decode[idle_worker], "/slow_down", {{"forward_sleep_time", nullptr}});
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(c->post("/generate", {{"text", "p"}, {"sampling_params", {{"max_new_tokens", 1}}}}).status, 200u);
  EXPECT_EQ(c->decode[idle_worker]->stats()["finished"], 5);
  EXPECT_EQ(c->decode[busy_worker]->stats()["received"], 1);
}

TEST(RoutesAlone, PathPrefixOfAWorkerUrlIsKept) {
  // A worker URL with a path: pdlb must call <prefix>/generate. The sim serves only the root, so a
  // prefix makes it answer 404, which pdlb reports as the prefill's failure naming the prefix.
  auto c = cluster::start(1, 1);
  std::string purl = c->prefill[0]->url() + "/v9";
  std::string durl = c->decode[0]->url();
  c->lb.reset();
  c->lb = pdlb_process::start({"--prefill", purl, std::to_string(c->prefill[0]->bootstrap_port()), "--decode", durl});
  auto r = c->post("/generate", {{"text", "x"}, {"sampling_params", {{"max_new_tokens", 1}}}});
  EXPECT_EQ(r.status, 404u) << r.body;
  EXPECT_THAT(r.body, HasSubstr("/v9"));
}

}  // namespace
}  // namespace pdlb::test

namespace pdlb::test {
namespace {

TEST(RoutesAlone, ConcurrentLogprobStreamsNeverCarryOtherRequestsBytes) {
  // Regression: the relay once read into its thread's scratch buffer, then waited for the
  // prefill's logprobs while other streams on the thread overwrote that buffer, so clients got
  // fragments of other answers. One thread makes every request share it.
  auto c = cluster::start(1, 1, {"--threads", "1"});
  std::atomic<int> bad{0};
  std::atomic<int> streams{0};
  std::string first_bad;
  std::mutex m;
  auto logprob_client = [&] {
    http_connection conn(c->port());
    json body = {{"input_ids", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}, {"return_logprob", true}, {"stream", true},
                 {"sampling_params", {{"max_new_tokens", 4}}}};
    for (int i = 0; i < 150; ++i) {
      auto r = conn.request("POST", "/generate", body.dump());
      ++streams;
      bool ok = r.status == 200 && r.complete;
      for (std::size_t pos = 0; ok && pos < r.body.size();) {
        auto end = r.body.find("\n\n", pos);
        if (end == std::string::npos) end = r.body.size();
        std::string event = r.body.substr(pos, end - pos);
        pos = end + 2;
        if (event.empty()) continue;
        if (event.rfind("data: ", 0) != 0) ok = false;
        else if (event != "data: [DONE]") {
          auto j = json::parse(event.substr(6), nullptr, false);
          ok = !j.is_discarded() && j["meta_info"]["input_token_logprobs"].size() >= 10 &&
               j["meta_info"]["input_token_logprobs"][9][1] == 10;
        }
      }
      if (!ok) {
        ++bad;
        std::lock_guard lock(m);
        if (first_bad.empty()) first_bad = r.body.substr(0, 600);
      }
    }
  };
  auto other_client = [&] {
    http_connection conn(c->port());
    std::string body = json{{"text", std::string(300, 'Z')}, {"sampling_params", {{"max_new_tokens", 4}}}}.dump();
    for (int i = 0; i < 300; ++i) conn.request("POST", "/generate", body);
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) threads.emplace_back(logprob_client);
  for (int i = 0; i < 6; ++i) threads.emplace_back(other_client);
  for (auto& t : threads) t.join();
  EXPECT_EQ(streams.load(), 900);
  EXPECT_EQ(bad.load(), 0) << first_bad;
}

}  // namespace
}  // namespace pdlb::test
