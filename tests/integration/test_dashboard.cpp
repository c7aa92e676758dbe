// configs/grafana/pdlb.json queries only metrics that pdlb's /metrics serves.
#include "integration/cluster.hpp"

#include <fstream>
#include <regex>
#include <set>

namespace pdlb::test {
namespace {

// True if the exposition has a sample of `name` (as `name{...} v` or `name v`).
bool has_sample(const std::string& text, const std::string& name) {
  for (const char* after : {"{", " "})
    if (text.starts_with(name + after) || text.find("\n" + name + after) != std::string::npos) return true;
  return false;
}

TEST(Dashboard, EveryMetricItsQueriesNameIsServedAtMetrics) {
  std::ifstream in(PDLB_SOURCE_DIR "/configs/grafana/pdlb.json");
  ASSERT_TRUE(in) << "cannot read configs/grafana/pdlb.json";
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto dash = json::parse(text, nullptr, false);
  ASSERT_FALSE(dash.is_discarded()) << "configs/grafana/pdlb.json is not JSON";
  ASSERT_TRUE(dash.contains("panels") && dash["panels"].is_array());

  // A worker in each role and one request through them, so that every per-worker and per-route
  // series exists.
  auto c = cluster::start(1, 1);
  ASSERT_EQ(c->post("/generate", small_request()).status, 200u);
  const std::string scrape = c->get("/metrics").body;

  const std::regex metric_name(R"(\b(pdlb|process)_[a-z_]+\b)");
  std::set<std::string> names;
  int panels = 0;
  for (auto& panel : dash["panels"]) {
    ++panels;
    ASSERT_TRUE(panel.contains("targets") && !panel["targets"].empty()) << panel.dump();
    for (auto& target : panel["targets"]) {
      const std::string expr = target.at("expr").get<std::string>();
      auto begin = std::sregex_iterator(expr.begin(), expr.end(), metric_name);
      ASSERT_NE(begin, std::sregex_iterator()) << "a query that names no pdlb metric: " << expr;
      for (auto it = begin; it != std::sregex_iterator(); ++it) names.insert(it->str());
    }
  }
  EXPECT_GE(panels, 10);
  for (auto& name : names) EXPECT_TRUE(has_sample(scrape, name)) << name << " is not in /metrics:\n" << scrape;
  // The issue's panels: rate and errors, latency, TTFT, per-worker load and state, retries, ejections.
  for (const char* needed : {"pdlb_requests_total", "pdlb_request_duration_seconds_bucket",
                             "pdlb_time_to_first_byte_seconds_bucket", "pdlb_worker_requests_in_flight",
                             "pdlb_worker_state", "pdlb_retries_total", "pdlb_ejections_total"})
    EXPECT_TRUE(names.count(needed)) << "no panel queries " << needed;
}

}  // namespace
}  // namespace pdlb::test
