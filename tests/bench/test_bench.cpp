// pdlb-bench, run as a real process against real servers on loopback: a run is only as good as its
// validation, so every kind of wrong answer must fail it (exit status 2, counted as failed), and a
// right answer must pass.
#include "common/canned_worker.hpp"
#include "integration/cluster.hpp"

#include <gmock/gmock.h>

#include <regex>

namespace pdlb::test {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

struct bench_run {
  int status = -1;
  json report;         ///< The --json report (null if none was printed).
  std::string output;  ///< Everything the bench printed.
};

// Runs pdlb-bench --json with `args` to its end.
bench_run run_bench(std::vector<std::string> args) {
  std::vector<std::string> argv{PDLB_BENCH_BIN, "--json", "--timeout", "20", "--connect-timeout", "5"};
  argv.insert(argv.end(), args.begin(), args.end());
  child_process p(argv);
  bench_run r;
  r.status = p.wait_exit(120s).value_or(-1);
  r.output = p.output();
  std::smatch m;
  static const std::regex report_line(R"((^|\n)(\{"[^\n]*\})\n)");
  if (std::regex_search(r.output, m, report_line)) r.report = json::parse(m[2].str(), nullptr, false);
  return r;
}

// A whole HTTP response with Content-Length.
std::string http_ok(const std::string& content_type, const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: " + content_type + "\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// A /generate stream as SGLang sends it: cumulative text, completion_tokens counting up.
std::string generate_events(int tokens) {
  std::string body;
  for (int i = 1; i <= tokens; ++i) {
    json e{{"text", std::string(static_cast<std::size_t>(i), 'a')},
           {"meta_info", {{"completion_tokens", i}, {"finish_reason", i == tokens ? json{{"type", "length"}} : json()}}}};
    body += "data: " + e.dump() + "\n\n";
  }
  return body;
}

// One streamed /generate request of 4 tokens against a canned answer.
bench_run one_stream_against(const std::string& response) {
  canned_worker worker(response);
  return run_bench({"--url", worker.url(), "--stream", "--requests", "1", "--concurrency", "1",
                    "--output-tokens", "4"});
}

TEST(BenchValidation, ValidRunThroughPdlbPassesAndCountsEveryToken) {
  auto c = cluster::start(1, 1);
  auto r = run_bench({"--url", "http://127.0.0.1:" + std::to_string(c->port()), "--stream", "--requests", "20",
                      "--concurrency", "4", "--output-tokens", "8"});
  EXPECT_EQ(r.status, 0) << r.output;
  ASSERT_TRUE(r.report.is_object()) << r.output;
  EXPECT_EQ(r.report["completed"], 20);
  EXPECT_EQ(r.report["failed"], 0);
  EXPECT_EQ(r.report["output_tokens"], 160);
  EXPECT_EQ(r.report["ttft_samples"], 20);
}

TEST(BenchValidation, WellFormedCannedStreamPasses) {
  // The control for the canned failures below: the same stream, whole, is accepted.
  auto r = one_stream_against(http_ok("text/event-stream", generate_events(4) + "data: [DONE]\n\n"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.report["completed"], 1) << r.output;
}

TEST(BenchValidation, StreamWithoutDoneFailsTheRun) {
  auto r = one_stream_against(http_ok("text/event-stream", generate_events(4)));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.report["failed"], 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("stream ended without [DONE]"));
}

TEST(BenchValidation, WrongTokenCountFailsTheRun) {
  auto r = one_stream_against(http_ok("text/event-stream", generate_events(3) + "data: [DONE]\n\n"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.report["failed"], 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("generated 3 tokens, expected 4"));
}

TEST(BenchValidation, ErrorEventInStreamFailsTheRun) {
  auto r = one_stream_against(http_ok(
      "text/event-stream",
      generate_events(2) + "data: {\"error\":{\"message\":\"decode worker died\"}}\n\ndata: [DONE]\n\n"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.report["failed"], 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("error event in stream"));
}

TEST(BenchValidation, NonStreamWrongTokenCountFailsTheRun) {
  canned_worker worker(http_ok("application/json",
                               R"({"text":"aa","meta_info":{"completion_tokens":2,"finish_reason":{"type":"length"}}})"));
  auto r = run_bench({"--url", worker.url(), "--requests", "1", "--concurrency", "1", "--output-tokens", "4"});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("generated 2 tokens, expected 4"));
}

TEST(BenchValidation, StreamCutByADyingDecodeWorkerFailsTheRun) {
  // pdlb-sim's fault: the decode worker cuts every stream after 2 token events.
  auto sim_args = fast_sim_args();
  auto c = std::make_unique<cluster>();
  c->prefill.push_back(sim_worker::start("prefill", sim_args));
  sim_args.insert(sim_args.end(), {"--die-after-tokens", "2"});
  c->decode.push_back(sim_worker::start("decode", sim_args));
  c->start_lb({});
  auto r = run_bench({"--url", "http://127.0.0.1:" + std::to_string(c->port()), "--stream", "--requests", "3",
                      "--concurrency", "1", "--output-tokens", "8"});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.report["failed"], 3) << r.output;
  EXPECT_EQ(r.report["completed"], 0) << r.output;
}

TEST(BenchValidation, ErrorStatusFailsTheRun) {
  auto c = cluster::start(1, 1);
  c->decode[0]->fault({{"fail_status", 503}});
  auto r = run_bench({"--url", "http://127.0.0.1:" + std::to_string(c->port()), "--requests", "2",
                      "--concurrency", "1", "--output-tokens", "4"});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.report["failed"], 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("status 503"));
}

TEST(BenchValidation, UnreachableServerFailsTheRun) {
  sockaddr_in addr;
  int fd = loopback_listener(1, addr);
  ::close(fd);  // a port that was just free: connections are refused
  auto r = run_bench({"--url", "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)), "--requests", "1",
                      "--concurrency", "1"});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("connect"));
}

}  // namespace
}  // namespace pdlb::test
