// Bad input and hostile clients: every case gets a clear answer (or a clean close), nothing is
// forwarded that should not be, and pdlb keeps serving.
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <future>
#include <regex>

namespace pdlb::test {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

const std::string small_body = R"({"text":"hi","sampling_params":{"max_new_tokens":2}})";

class Hardening : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    c_ = cluster::start(1, 1, {"--client-header-timeout", "1", "--client-body-timeout", "1"}).release();
  }
  static void TearDownTestSuite() {
    delete c_;
    c_ = nullptr;
  }
  static void expect_serving() {
    auto r = c_->post_raw("/generate", small_body);
    EXPECT_EQ(r.status, 200u) << r.body << r.error;
  }
  static int prefill_received() { return c_->prefill[0]->stats()["received"].get<int>(); }
  static cluster* c_;
};
cluster* Hardening::c_ = nullptr;

TEST_F(Hardening, ChunkedRequestBodyIsAccepted) {
  http_connection conn(c_->port());
  std::string chunked = "10\r\n" + small_body.substr(0, 16) + "\r\n" +
                        [&] {
                          std::string rest = small_body.substr(16);
                          char size[16];
                          std::snprintf(size, sizeof size, "%zx", rest.size());
                          return std::string(size) + "\r\n" + rest + "\r\n";
                        }() +
                        "0\r\n\r\n";
  conn.send("POST", "/generate", chunked, {{"Transfer-Encoding", "chunked"}, {"Content-Type", "application/json"}});
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 200u) << r.body;
}

TEST_F(Hardening, Expect100ContinueGetsContinueThenTheAnswer) {
  http_connection conn(c_->port());
  conn.send_raw("POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                std::to_string(small_body.size()) + "\r\nExpect: 100-continue\r\n\r\n");
  auto interim = conn.read_header();
  EXPECT_EQ(interim.status, 100u);
  conn.send_raw(small_body);
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 200u) << r.body << r.error;
}

TEST_F(Hardening, Http10ClientGetsAnAnswerAndTheConnectionCloses) {
  http_connection conn(c_->port());
  conn.send_raw("POST /generate HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: " +
                std::to_string(small_body.size()) + "\r\n\r\n" + small_body);
  std::string all = conn.read_until_close();
  EXPECT_THAT(all, HasSubstr("200 OK"));
  EXPECT_THAT(all, HasSubstr("\"text\""));
}

TEST_F(Hardening, Http10StreamEndsByClosingTheConnection) {
  http_connection conn(c_->port());
  std::string body = R"({"text":"hi","stream":true,"sampling_params":{"max_new_tokens":3}})";
  conn.send_raw("POST /generate HTTP/1.0\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  std::string all = conn.read_until_close();
  EXPECT_THAT(all, HasSubstr("200 OK"));
  EXPECT_THAT(all, ::testing::Not(HasSubstr("Transfer-Encoding: chunked")));
  EXPECT_THAT(all, HasSubstr("data: [DONE]"));
}

TEST_F(Hardening, PipelinedRequestsAreAnsweredInOrder) {
  http_connection conn(c_->port());
  std::string one = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  std::string two = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(small_body.size()) +
                    "\r\n\r\n" + small_body;
  std::string three = "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
  conn.send_raw(one + two + three);
  EXPECT_EQ(conn.read_response().status, 200u);
  auto r2 = conn.read_response();
  EXPECT_EQ(r2.status, 200u);
  EXPECT_THAT(r2.body, HasSubstr("meta_info"));
  EXPECT_EQ(conn.read_response().status, 404u);
}

TEST_F(Hardening, HeadResponsesCarryNoBodySoThePipelinedNextAnswerIsIntact) {
  http_connection conn(c_->port());
  conn.send_raw("HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string all = conn.read_until_close();
  auto end_of_first = all.find("\r\n\r\n");
  ASSERT_NE(end_of_first, std::string::npos) << all;
  EXPECT_THAT(all.substr(0, end_of_first), HasSubstr(" 404 "));
  EXPECT_THAT(all.substr(0, end_of_first), HasSubstr("Content-Length: "));  // as the GET's would be
  EXPECT_EQ(all.substr(end_of_first + 4, 15), "HTTP/1.1 200 OK") << all;
}

TEST_F(Hardening, ServerOwnErrorToHeadHasNoBody) {
  http_connection conn(c_->port());
  conn.send_raw("HEAD /generate HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n");
  std::string all = conn.read_until_close();
  auto end_of_header = all.find("\r\n\r\n");
  ASSERT_NE(end_of_header, std::string::npos) << all;
  EXPECT_THAT(all.substr(0, end_of_header), HasSubstr(" 417 "));
  EXPECT_EQ(all.size(), end_of_header + 4) << all;  // nothing after the header
}

TEST_F(Hardening, ErrorBodyIsValidJsonForARequestPathWithInvalidUtf8) {
  http_connection conn(c_->port());
  conn.send_raw("GET /\xe3 HTTP/1.1\r\nHost: x\r\n\r\n");
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 404u);
  auto j = nlohmann::json::parse(r.body, nullptr, false);  // rejects invalid UTF-8
  ASSERT_FALSE(j.is_discarded()) << r.body;
  EXPECT_EQ(j["error"]["message"], "no route for /\xef\xbf\xbd");
}

TEST_F(Hardening, OversizedHeaderIs431) {
  http_connection conn(c_->port());
  conn.send("POST", "/generate", small_body, {{"X-Big", std::string(100 * 1024, 'a')}});
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 431u);
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  expect_serving();
}

// The limit (64 KiB) counts the request line and the fields together: the fields alone are just under
// it here, the whole header just over. Beast 1.81 checks the two separately.
TEST_F(Hardening, HeaderOverTheLimitOnlyWithItsRequestLineIs431) {
  http_connection conn(c_->port());
  conn.send("POST", "/generate?" + std::string(200, 'q'), small_body,
            {{"X-Big", std::string(65400, 'a')}});
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 431u);
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
  expect_serving();
}

TEST_F(Hardening, SlowlorisHeaderIsCutWith408) {
  auto start = std::chrono::steady_clock::now();
  http_connection conn(c_->port());
  conn.send_raw("POST /generate HTTP/1.1\r\nHost: x\r\nX-Slow: ");
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 408u) << r.error;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  expect_serving();
}

TEST_F(Hardening, HalfABodyThenSilenceIsCutWith408AndNothingForwarded) {
  int before = prefill_received();
  http_connection conn(c_->port());
  conn.send_raw("POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"text\":\"only part");
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 408u) << r.error;
  EXPECT_EQ(prefill_received(), before);
  expect_serving();
}

TEST_F(Hardening, ContentLengthShorterThanTheBodyLeavesGarbageThatGets400) {
  http_connection conn(c_->port());
  // The declared length cuts the JSON short: the first request is malformed JSON (400), and the
  // rest of the bytes are not a valid request either (400, connection closed).
  conn.send_raw("POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + small_body);
  auto r = conn.read_response();
  EXPECT_EQ(r.status, 400u);
  auto r2 = conn.read_response();
  EXPECT_EQ(r2.status, 400u) << r2.error;
  expect_serving();
}

TEST_F(Hardening, DeepNestingIsRejectedWithoutCrashing) {
  std::string deep = R"({"text":"x","extra":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  auto r = c_->post_raw("/generate", deep);
  EXPECT_EQ(r.status, 400u);
  EXPECT_TRUE(is_error_body(r.body));
  EXPECT_THAT(r.body, HasSubstr("nesting"));
  expect_serving();
}

TEST_F(Hardening, InvalidUtf8IsRejected) {
  auto r = c_->post_raw("/generate", std::string("{\"text\":\"bad \xff\xfe here\"}"));
  EXPECT_EQ(r.status, 400u);
  EXPECT_TRUE(is_error_body(r.body)) << r.body;
}

TEST_F(Hardening, HugeNumbersAreForwardedUnchanged) {
  auto r = c_->post_raw("/generate", R"({"text":"n","huge":123456789012345678901234567890123,"sampling_params":{"max_new_tokens":1}})");
  EXPECT_EQ(r.status, 200u) << r.body;
}

TEST_F(Hardening, WrongTypesAndEmptyBatchesAre400) {
  int before = prefill_received();
  for (const char* bad : {R"({"text":5})", R"({"input_ids":"x"})", R"({"text":"a","stream":"yes"})",
                          R"({"text":[]})", R"({"input_ids":[]})", R"({"text":"a","return_logprob":1})"}) {
    auto r = c_->post_raw("/generate", bad);
    EXPECT_EQ(r.status, 400u) << bad;
    EXPECT_TRUE(is_error_body(r.body)) << bad << " -> " << r.body;
  }
  EXPECT_EQ(prefill_received(), before);
}

TEST(HardeningAlone, ApiKeyGuardsInferenceAndAdminKeyGuardsAdminRoutes) {
  auto c = cluster::start(1, 1, {"--api-key", "sk-inference", "--admin-api-key", "sk-admin"});
  auto no_key = c->post_raw("/generate", small_body);
  EXPECT_EQ(no_key.status, 401u);
  EXPECT_TRUE(is_error_body(no_key.body));
  EXPECT_EQ(c->post_raw("/generate", small_body, {{"Authorization", "Bearer wrong"}}).status, 401u);
  EXPECT_EQ(c->post_raw("/generate", small_body, {{"Authorization", "Bearer sk-admin"}}).status, 401u);
  EXPECT_EQ(c->post_raw("/generate", small_body, {{"Authorization", "Bearer sk-inference"}}).status, 200u);
  EXPECT_EQ(c->post_raw("/flush_cache", "", {{"Authorization", "Bearer sk-inference"}}).status, 401u);
  EXPECT_EQ(c->post_raw("/flush_cache", "", {{"Authorization", "Bearer sk-admin"}}).status, 200u);
  EXPECT_EQ(c->get("/health").status, 200u);  // health checks need no key
  EXPECT_THAT(c->lb->process().output(), ::testing::Not(HasSubstr("sk-inference")));
  EXPECT_THAT(c->lb->process().output(), ::testing::Not(HasSubstr("sk-admin")));
}

TEST(HardeningAlone, WarnsWhenListeningBeyondLoopbackWithoutKeys) {
  const std::string ready_file = new_ready_file_path();
  child_process p({PDLB_BIN, "--host", "0.0.0.0", "--port", "0", "--log-interval", "0", "--ready-file", ready_file});
  EXPECT_TRUE(p.wait_for_line(std::regex("without --api-key and --admin-api-key"), 10s)) << p.output();
  // Up and handling signals before teardown stops it.
  EXPECT_TRUE(wait_for_ready_file(p, ready_file, 10s)) << p.output();
}

TEST(HardeningAlone, BurstAboveTheConnectorLimitWaitsForFreeConnections) {
  // Two connections for all: each request needs both at once (its prefill answers only after its
  // decode has connected), so two requests holding one each would wait for each other until the
  // timeout (503/504 here, within 5 s). Two threads take slots at the same moments.
  auto c = cluster::start(1, 1, {"--connector-limit", "2", "--threads", "2", "--timeout", "5"});
  for (int round = 0; round < 4; ++round) {
    std::vector<std::future<http_response>> all;
    for (int i = 0; i < 16; ++i)
      all.push_back(std::async(std::launch::async, [&] { return c->post_raw("/generate", small_body); }));
    for (auto& f : all) {
      auto r = f.get();
      EXPECT_EQ(r.status, 200u) << "round " << round << ": " << r.body;
    }
  }
}

TEST(HardeningAlone, PerWorkerLimitsOfOneServeEveryRequestOfABurstInTurn) {
  // One connection per worker, two pairs: the legs of different requests take the workers' slots
  // in one order, so none holds one worker while waiting for another held by a waiter for its own.
  auto c = cluster::start(2, 2, {"--connector-limit-per-host", "1", "--threads", "2", "--timeout", "5"});
  std::vector<std::future<http_response>> all;
  for (int i = 0; i < 24; ++i)
    all.push_back(std::async(std::launch::async, [&] { return c->post_raw("/generate", small_body); }));
  for (auto& f : all) {
    auto r = f.get();
    EXPECT_EQ(r.status, 200u) << r.body;
  }
}

TEST(HardeningAlone, NoFreeConnectionBeforeTheTimeoutGives503) {
  // Two connections allowed. A slow stream holds its decode connection (each event comes well within
  // --timeout), so the next request finds no slot for its decode leg until --timeout: 503.
  auto c = cluster::start(1, 1, {"--connector-limit", "2", "--timeout", "1"});
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", 0.05}});
  {
    http_connection holder(c->port());
    holder.send("POST", "/generate", small_request(true, 100000).dump());
    ASSERT_EQ(holder.read_header().status, 200u);
    ASSERT_TRUE(holder.read_body_some().has_value());  // the stream is being relayed
    auto r = c->post_raw("/generate", small_body);
    EXPECT_EQ(r.status, 503u) << r.body;
    EXPECT_NE(r.body.find("connector limit reached"), std::string::npos) << r.body;
    holder.close();  // the client leaves: both legs end, the slots are free again
  }
  post_json(*c->decode[0], "/slow_down", {{"forward_sleep_time", nullptr}});
  expect_clean_and_serving(*c);
}

TEST(HardeningAlone, RunningOutOfFileDescriptorsBacksOffAndRecovers) {
  auto c = cluster::start(1, 1);
  std::string purl = c->prefill[0]->url(), durl = c->decode[0]->url();
  c->lb.reset();
  // A hard limit of 64 descriptors: a few dozen idle clients exhaust it.
  const std::string ready_file = new_ready_file_path();
  child_process lb({"/bin/sh", "-c",
                    "ulimit -n 64 && exec " + std::string(PDLB_BIN) + " --host 127.0.0.1 --port 0 --log-interval 0 --threads 1 --prefill " +
                        purl + " " + std::to_string(c->prefill[0]->bootstrap_port()) + " --decode " + durl +
                        " --ready-file " + ready_file});
  auto ready = wait_for_ready_file(lb, ready_file, 10s);
  ASSERT_TRUE(ready) << lb.output();
  auto port = ready->port;
  std::vector<std::unique_ptr<http_connection>> hogs;
  for (int i = 0; i < 80; ++i) hogs.push_back(std::make_unique<http_connection>(port, "127.0.0.1", 2s));
  EXPECT_TRUE(lb.wait_for_line(std::regex("accept failed .*backing off"), 10s)) << lb.output();
  hogs.clear();  // give the descriptors back
  auto r = http_request(port, "POST", "/generate", small_body, {}, 10s);
  EXPECT_EQ(r.status, 200u) << r.error << r.body;
  EXPECT_TRUE(lb.running());
}

}  // namespace
}  // namespace pdlb::test
