// --access-log -: one JSON line per request, naming its id, route, status, workers, sizes and times.
#include "integration/cluster.hpp"

#include <regex>

namespace pdlb::test {
namespace {

using namespace std::chrono_literals;

json access_line(cluster& c, const std::string& id) {
  auto m = c.lb->process().wait_for_line(std::regex("^\\{\"time\":\".*\"request_id\":\"" + id + "\".*\\}$"), 10s);
  if (!m) {
    ADD_FAILURE() << "no access log line for " << id << " in:\n" << c.lb->process().output();
    return json();
  }
  return parse_json((*m)[0]);
}

TEST(AccessLog, EachRequestGetsOneJsonLineWithWhatHappened) {
  auto c = cluster::start(1, 1, {"--access-log", "-", "--max-retries", "0"});
  const std::string body = small_request().dump();
  auto ok = c->post_raw("/generate", body, {{"X-Request-Id", "acc-ok"}});
  ASSERT_EQ(ok.status, 200u);
  auto j = access_line(*c, "acc-ok");
  EXPECT_TRUE(std::regex_match(j.value("time", ""), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)"))) << j.dump();
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["path"], "/generate");
  EXPECT_EQ(j["status"], 200);
  EXPECT_EQ(j["prefill"], c->prefill[0]->url());
  EXPECT_EQ(j["decode"], c->decode[0]->url());
  EXPECT_EQ(j["bytes_in"], body.size());
  EXPECT_EQ(j["bytes_out"], ok.body.size());
  EXPECT_TRUE(j["ttfb_ms"].is_number()) << j.dump();
  EXPECT_GE(j["duration_ms"].get<double>(), j["ttfb_ms"].get<double>());
  EXPECT_EQ(j["retries"], 0);
  EXPECT_EQ(j["client_gone"], false);

  post_json(*c->prefill[0], "/sim/fault", {{"fail_status", 500}, {"count", 1}});
  EXPECT_EQ(c->post("/generate", small_request(), {{"X-Request-Id", "acc-fail"}}).status, 500u);
  auto f = access_line(*c, "acc-fail");
  EXPECT_EQ(f["status"], 500);
  EXPECT_EQ(f["prefill"], c->prefill[0]->url());

  auto other = c->get("/health");
  ASSERT_EQ(other.status, 200u);
  auto h = access_line(*c, other.header("x-request-id"));
  EXPECT_EQ(h["path"], "/health");
  EXPECT_TRUE(h["prefill"].is_null()) << h.dump();
}

}  // namespace
}  // namespace pdlb::test
