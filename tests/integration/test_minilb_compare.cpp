// The same requests through pdlb and through the seed's minilb, in front of the same workers:
// the answers must be the same wherever minilb is right (ids and timings aside).
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <regex>

namespace pdlb::test {
namespace {

using namespace std::chrono_literals;

// The seed's minilb: $PDLB_MINILB if set, else ../shared/anchors/minilb beside the checkout (CI has
// shared/ there). A clone on its own has neither: the comparison is skipped, saying why.
std::string minilb_script() {
  if (const char* env = std::getenv("PDLB_MINILB"); env && *env)
    return std::filesystem::exists(env) ? std::string(env) : std::string();
  auto p = std::string(PDLB_SOURCE_DIR) + "/../shared/anchors/minilb/run-minilb";
  if (std::filesystem::exists(p)) return std::filesystem::canonical(p).string();
  return {};
}

// A free loopback port: minilb (uvicorn) cannot report a port it picked itself.
std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Removes what legitimately differs between two runs: request ids, timestamps and latencies.
void normalize(json& j) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end();) {
      const std::string& k = it.key();
      if (k == "id" || k == "rid" || k == "created" || k.find("latency") != std::string::npos ||
          k.find("_time") != std::string::npos || k == "system_fingerprint") {
        it = j.erase(it);
      } else {
        normalize(*it);
        ++it;
      }
    }
  } else if (j.is_array()) {
    for (auto& e : j) normalize(e);
  }
}

json normalized_body(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return body;
  normalize(j);
  return j;
}

json normalized_events(const std::string& body) {
  json out = json::array();
  for (auto& e : sse_data(body)) out.push_back(e == "[DONE]" ? json("[DONE]") : normalized_body(e));
  return out;
}

class MinilbCompare : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    script_ = minilb_script();
    if (script_.empty()) return;
    c_ = cluster::start(1, 1).release();
    auto port = free_port();
    minilb_ = new child_process({script_, "--host", "127.0.0.1", "--port", std::to_string(port), "--prefill",
                                 c_->prefill[0]->url(), "--prefill-bootstrap-ports",
                                 std::to_string(c_->prefill[0]->bootstrap_port()), "--decode", c_->decode[0]->url()});
    if (minilb_->wait_for_line(std::regex("Uvicorn running on"), 120s))
      minilb_port_ = port;
  }
  static void TearDownTestSuite() {
    delete minilb_;
    delete c_;
  }
  void SetUp() override {
    if (script_.empty())
      GTEST_SKIP() << "minilb not found: set PDLB_MINILB to the seed's run-minilb, or put shared/ beside the "
                      "checkout (../shared/anchors/minilb/run-minilb)";
    ASSERT_NE(minilb_port_, 0) << "minilb did not start:\n" << minilb_->output();
  }

  // Sends the same request to both; returns {pdlb, minilb}.
  static std::pair<http_response, http_response> both(const std::string& method, const std::string& path,
                                                      const std::string& body = {}) {
    return {http_request(c_->port(), method, path, body), http_request(minilb_port_, method, path, body)};
  }

  static void expect_same_json(const std::string& path, const json& body) {
    auto [a, b] = both("POST", path, body.dump());
    EXPECT_EQ(a.status, b.status) << path << " " << body.dump() << "\npdlb: " << a.body << "\nminilb: " << b.body;
    EXPECT_EQ(normalized_body(a.body), normalized_body(b.body)) << path << " " << body.dump();
  }

  static void expect_same_stream(const std::string& path, const json& body) {
    auto [a, b] = both("POST", path, body.dump());
    ASSERT_EQ(a.status, 200u) << a.body;
    ASSERT_EQ(b.status, 200u) << b.body;
    EXPECT_NE(a.header("content-type").find("text/event-stream"), std::string::npos);
    EXPECT_NE(b.header("content-type").find("text/event-stream"), std::string::npos);
    EXPECT_EQ(normalized_events(a.body), normalized_events(b.body)) << path << " " << body.dump();
  }

  static inline std::string script_;
  static inline cluster* c_ = nullptr;
  static inline child_process* minilb_ = nullptr;
  static inline std::uint16_t minilb_port_ = 0;
};

TEST_F(MinilbCompare, GenerateSingleText) {
  expect_same_json("/generate", {{"text", "Once upon a time"}, {"sampling_params", {{"max_new_tokens", 8}}}});
}

TEST_F(MinilbCompare, GenerateUnicodeAndNumbers) {
  expect_same_json("/generate", {{"text", "héllo ✓ 你好"}, {"sampling_params", {{"max_new_tokens", 5}, {"temperature", 0.7}, {"top_p", 1e-3}}}});
}

TEST_F(MinilbCompare, GenerateInputIds) {
  expect_same_json("/generate", {{"input_ids", {1, 2, 3, 4, 5}}, {"sampling_params", {{"max_new_tokens", 4}}}});
}

TEST_F(MinilbCompare, GenerateBatchOfTexts) {
  expect_same_json("/generate", {{"text", {"a", "bb", "ccc"}}, {"sampling_params", {{"max_new_tokens", 3}}}});
}

TEST_F(MinilbCompare, GenerateBatchOfInputIds) {
  expect_same_json("/generate", {{"input_ids", {{1, 2}, {3, 4, 5}}}, {"sampling_params", {{"max_new_tokens", 2}}}});
}

TEST_F(MinilbCompare, GenerateWithLogprobs) {
  expect_same_json("/generate", {{"input_ids", {9, 8, 7, 6}}, {"return_logprob", true}, {"sampling_params", {{"max_new_tokens", 3}}}});
}

TEST_F(MinilbCompare, GenerateStream) {
  expect_same_stream("/generate", {{"text", "stream"}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 6}}}});
}

TEST_F(MinilbCompare, GenerateStreamWithLogprobs) {
  expect_same_stream("/generate", {{"input_ids", {3, 1, 4, 1, 5}}, {"stream", true}, {"return_logprob", true},
                                   {"sampling_params", {{"max_new_tokens", 4}}}});
}

TEST_F(MinilbCompare, Completions) {
  expect_same_json("/v1/completions", {{"model", "m"}, {"prompt", "Say hi"}, {"max_tokens", 5}});
  expect_same_stream("/v1/completions", {{"model", "m"}, {"prompt", "Say hi"}, {"max_tokens", 5}, {"stream", true}});
}

TEST_F(MinilbCompare, ChatCompletions) {
  json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "Hello!"}}}}, {"max_tokens", 4}};
  expect_same_json("/v1/chat/completions", body);
  body["stream"] = true;
  expect_same_stream("/v1/chat/completions", body);
}

TEST_F(MinilbCompare, HealthAndModels) {
  auto [a, b] = both("GET", "/health");
  EXPECT_EQ(a.status, b.status);
  auto [ma, mb] = both("GET", "/v1/models");
  EXPECT_EQ(ma.status, mb.status);
  EXPECT_EQ(normalized_body(ma.body), normalized_body(mb.body));
}

TEST_F(MinilbCompare, ServerInfoHasTheSameWorkerEntries) {
  auto [a, b] = both("GET", "/get_server_info");
  ASSERT_EQ(a.status, 200u);
  ASSERT_EQ(b.status, 200u);
  auto ja = normalized_body(a.body);
  auto jb = normalized_body(b.body);
  // pdlb adds a top-level internal_states (bench_serving reads it); the rest matches minilb, apart
  // from the workers' own counters, which moved between the two calls.
  ASSERT_TRUE(ja.contains("internal_states"));
  EXPECT_EQ(ja["prefill"].size(), jb["prefill"].size());
  EXPECT_EQ(ja["decode"].size(), jb["decode"].size());
  EXPECT_EQ(ja["decode"][0]["internal_states"].size(), jb["decode"][0]["internal_states"].size());
}

}  // namespace
}  // namespace pdlb::test
