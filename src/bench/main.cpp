// pdlb-bench: a load generator for SGLang's /generate and OpenAI routes, reporting like SGLang's
// bench_serving (TTFT, ITL, TPOT, E2E), with every response validated. See docs/benchmarks.md.
#include "pdlb/fd_limit.hpp"
#include "runner.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>


#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <numeric>

namespace {

using pdlb::bench::bench_result;


struct summary {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
  std::size_t n = 0;
};

// Percentiles with linear interpolation, as numpy.percentile (which bench_serving uses).
summary summarize(std::vector<float> v) {
  summary s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) {
    double rank = p / 100.0 * static_cast<double>(v.size() - 1);
    auto lo = static_cast<std::size_t>(std::floor(rank));
    auto hi = std::min(lo + 1, v.size() - 1);
    double frac = rank - static_cast<double>(lo);
    return static_cast<double>(v[lo]) * (1 - frac) + static_cast<double>(v[hi]) * frac;
  };
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.p50 = pct(50);
  s.p90 = pct(90);
  s.p99 = pct(99);
  s.max = v.back();
  return s;
}

void print_text(const bench_result& r, const std::string& label) {
  auto line = [](const char* name, double v, int prec = 2) { std::printf("%-40s %.*f\n", name, prec, v); };
  auto count = [](const char* name, std::uint64_t v) {
    std::printf("%-40s %llu\n", name, static_cast<unsigned long long>(v));
  };
  double dur = r.duration_s > 0 ? r.duration_s : 1e-9;
  std::printf("============ Serving Benchmark Result ============\n");
  if (!label.empty()) std::printf("%-40s %s\n", "Label:", label.c_str());
  count("Successful requests:", r.ok);
  count("Failed requests:", r.failed);
  line("Benchmark duration (s):", r.duration_s);
  count("Total input tokens:", r.input_tokens);
  count("Total generated tokens:", r.output_tokens);
  line("Request throughput (req/s):", static_cast<double>(r.ok) / dur);
  line("Output token throughput (tok/s):", static_cast<double>(r.output_tokens) / dur);
  line("Response bytes throughput (MB/s):", static_cast<double>(r.bytes) / dur / 1e6);
  count("Peak requests in flight:", r.peak_in_flight);
  auto block = [&](const char* title, const char* name, const std::vector<float>& v) {
    auto s = summarize(v);
    std::printf("%s\n", title);
    std::string n(name);
    line(("Mean " + n + " (ms):").c_str(), s.mean);
    line(("Median " + n + " (ms):").c_str(), s.p50);
    line(("P99 " + n + " (ms):").c_str(), s.p99);
  };
  block("---------------Time to First Token----------------", "TTFT", r.ttft);
  block("-----Time per Output Token (excl. 1st token)------", "TPOT", r.tpot);
  block("---------------Inter-token Latency----------------", "ITL", r.itl);
  block("----------------End-to-end Latency----------------", "E2E", r.e2e);
  if (!r.lag.empty())
    block("---Event delay (arrival - worker e2e_latency)-----", "delay", r.lag);
  if (!r.jitter.empty())
    block("------Event jitter (delay - first event's)-------", "jitter", r.jitter);
  if (!r.event_latency.empty()) {
    // One-way: receive time minus the worker's write time (pdlb-sim --stamp-events).
    auto s = summarize(r.event_latency);
    std::printf("---One-way event latency (arrival - sim_write)----\n");
    line("Mean event latency (ms):", s.mean, 3);
    line("Median event latency (ms):", s.p50, 3);
    line("P90 event latency (ms):", s.p90, 3);
    line("P99 event latency (ms):", s.p99, 3);
    line("Max event latency (ms):", s.max, 3);
  }
  if (!r.errors.empty()) {
    std::printf("---------------------Errors-----------------------\n");
    for (const auto& [why, n] : r.errors) std::printf("%8llu  %s\n", static_cast<unsigned long long>(n), why.c_str());
  }
  std::printf("==================================================\n");
}

nlohmann::json to_json(const bench_result& r, const std::string& label, bool samples) {
  double dur = r.duration_s > 0 ? r.duration_s : 1e-9;
  nlohmann::json j;
  if (!label.empty()) j["label"] = label;
  j["completed"] = r.ok;
  j["failed"] = r.failed;
  j["duration_s"] = r.duration_s;
  j["input_tokens"] = r.input_tokens;
  j["output_tokens"] = r.output_tokens;
  j["events"] = r.events;
  j["bytes"] = r.bytes;
  j["peak_in_flight"] = r.peak_in_flight;
  j["request_throughput"] = static_cast<double>(r.ok) / dur;
  j["output_throughput"] = static_cast<double>(r.output_tokens) / dur;
  auto put = [&](const char* name, const std::vector<float>& v) {
    auto s = summarize(v);
    std::string n(name);
    j["mean_" + n + "_ms"] = s.mean;
    j["median_" + n + "_ms"] = s.p50;
    j["p90_" + n + "_ms"] = s.p90;
    j["p99_" + n + "_ms"] = s.p99;
    j["max_" + n + "_ms"] = s.max;
    j[n + "_samples"] = s.n;
  };
  put("ttft", r.ttft);
  put("tpot", r.tpot);
  put("itl", r.itl);
  put("e2e", r.e2e);
  put("delay", r.lag);
  put("jitter", r.jitter);
  put("event_latency", r.event_latency);
  if (samples) {
    // Every request's figures, for plots (a CDF) that percentiles cannot give.
    j["samples_ms"] = {{"send", r.send}, {"ttft", r.ttft}, {"tpot", r.tpot}, {"e2e", r.e2e}};
  }
  j["errors"] = nlohmann::json::object();
  for (const auto& [why, n] : r.errors) j["errors"][why] = n;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace pdlb::bench;
  bench_options o;
  std::string route = "generate";
  bool json = false;
  bool samples = false;
  bool print_body = false;
  std::string label;

  CLI::App app{"pdlb-bench: load generator for SGLang /generate and OpenAI routes (bench_serving-style report)"};
  app.set_version_flag("--version", std::string("pdlb-bench ") + PDLB_VERSION);
  app.add_option("--url", o.url, "Server to load (a load balancer or a worker)")->capture_default_str();
  app.add_option("--route", route, "API to call")
      ->check(CLI::IsMember({"generate", "completions", "chat"}))
      ->capture_default_str();
  app.add_flag("--stream", o.stream, "Streamed responses (SSE)");
  app.add_option("--concurrency", o.concurrency, "Closed loop: requests kept in flight");
  app.add_option("--request-rate", o.request_rate, "Open loop: Poisson arrivals per second")
      ->check(CLI::PositiveNumber);
  app.add_flag("--exact-rate", o.exact_rate,
               "Open loop with --requests N: N Poisson arrivals over exactly N/R seconds (count fixed)");
  app.add_option("--requests", o.requests, "Requests to issue (0: no limit)")->capture_default_str();
  app.add_option("--duration", o.duration_s, "Seconds to keep issuing requests (0: no limit)")
      ->capture_default_str();
  app.add_option("--input-tokens", o.input_tokens, "Prompt as input_ids of this length");
  app.add_option("--prompt-chars", o.prompt_chars, "Prompt as text of this many characters");
  app.add_option("--output-tokens", o.output_tokens, "max_new_tokens (ignore_eos is set)")
      ->capture_default_str();
  app.add_flag("!--no-check-tokens", o.check_tokens,
               "Accept any number of generated tokens (default: exactly --output-tokens)");
  app.add_flag("--return-logprob", o.return_logprob,
               "Ask for logprobs; /generate responses must then carry --input-tokens input logprobs");
  app.add_option("--model", o.model, "Model name for the OpenAI routes")->capture_default_str();
  app.add_option("--threads", o.threads, "io_context threads of the load generator")->capture_default_str();
  app.add_option("--connect-timeout", o.connect_timeout_s, "Seconds")->capture_default_str();
  app.add_option("--timeout", o.idle_timeout_s, "Seconds of silence before a response counts as failed")
      ->capture_default_str();
  app.add_flag("--direct-pd", o.direct_pd,
               "No proxy: add bootstrap_host/port/room and send to --prefill and --decode at once");
  app.add_option("--prefill", o.prefill_url, "Direct PD: the prefill worker URL");
  app.add_option("--bootstrap-port", o.bootstrap_port, "Direct PD: the prefill worker's bootstrap port");
  app.add_option("--decode", o.decode_url, "Direct PD: the decode worker URL");
  app.add_flag("--json", json, "Print one JSON object instead of the text report");
  app.add_flag("--samples", samples, "With --json: add every request's send time, TTFT, TPOT and E2E (samples_ms)");
  app.add_option("--seed", o.seed, "Seed of the Poisson arrivals and bootstrap rooms (default: the clock)");
  app.add_option("--label", label, "Name shown in the report");
  app.add_flag("--print-body", print_body, "Print the request body that would be sent, and exit");
  CLI11_PARSE(app, argc, argv);

  o.route = route == "completions" ? route_kind::completions
            : route == "chat"      ? route_kind::chat
                                   : route_kind::generate;
  if (print_body) {
    std::fwrite(build_body(o).data(), 1, build_body(o).size(), stdout);
    return 0;
  }
  std::signal(SIGPIPE, SIG_IGN);
  pdlb::raise_fd_limit();  // thousands of streams need thousands of descriptors
  try {
    auto r = run_bench(o);
    if (json) {
      std::cout << to_json(r, label, samples).dump() << std::endl;
    } else {
      print_text(r, label);
    }
    // Exit status 2 when any request failed, so scripts cannot miss it.
    return r.failed == 0 && r.ok > 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pdlb-bench: %s\n", e.what());
    return 1;
  }
}
