// GET /get_loads (/v1/loads): each worker's in-flight count through pdlb and its own /get_load,
// with a worker that never answers listed by its error rather than holding the answer up.
#include "integration/cluster.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

namespace pdlb::test {
namespace {

TEST(Loads, EachWorkerIsListedWithItsInFlightCountAndItsOwnLoad) {
  auto c = cluster::start(1, 1);
  for (const char* path : {"/get_loads", "/v1/loads"}) {
    auto r = c->get(path);
    ASSERT_EQ(r.status, 200u) << r.body;
    auto j = parse_json(r.body);
    ASSERT_EQ(j["workers"].size(), 2u) << r.body;
    EXPECT_EQ(j["workers"][0]["url"], c->prefill[0]->url());
    EXPECT_EQ(j["workers"][0]["worker_type"], "prefill");
    EXPECT_EQ(j["workers"][1]["url"], c->decode[0]->url());
    for (auto& w : j["workers"]) {
      EXPECT_EQ(w["in_flight"], 0) << r.body;
      EXPECT_TRUE(w["load"].is_array()) << r.body;  // pdlb-sim's own /get_load: one entry per DP rank
      EXPECT_FALSE(w.contains("load_error")) << r.body;
    }
  }
  EXPECT_EQ(c->post_raw("/get_loads", "").status, 405u);
}

TEST(Loads, AWorkerThatNeverAnswersIsListedWithAnErrorWithinTheTimeout) {
  auto c = cluster::start(1, 1);
  // A socket that listens (so connecting works) but never accepts nor answers.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string silent = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  ASSERT_EQ(c->post("/workers", {{"url", silent}, {"worker_type", "decode"}}).status, 200u);

  const auto start = std::chrono::steady_clock::now();
  auto r = c->get("/get_loads");
  const auto took = std::chrono::steady_clock::now() - start;
  ::close(fd);
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_LT(took, std::chrono::seconds(6));
  auto j = parse_json(r.body);
  ASSERT_EQ(j["workers"].size(), 3u) << r.body;
  for (auto& w : j["workers"]) {
    if (w["url"] == silent) {
      EXPECT_TRUE(w["load"].is_null()) << r.body;
      EXPECT_NE(w.value("load_error", "").find("did not answer within 2000 ms"), std::string::npos) << r.body;
    } else {
      EXPECT_TRUE(w["load"].is_array()) << r.body;
    }
  }
}

}  // namespace
}  // namespace pdlb::test
