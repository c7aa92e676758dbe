// pdlb-bench's load engine: closed-loop or open-loop requests over keep-alive HTTP/1.1 connections,
// every response validated, timings collected like SGLang's bench_serving.
#pragma once

#include "inspect.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace pdlb::bench {

/// What to send, how, and how to check it.
struct bench_options {
  std::string url = "http://127.0.0.1:8000";  ///< The load balancer (or a worker).
  route_kind route = route_kind::generate;
  bool stream = false;
  unsigned concurrency = 0;    ///< Closed loop: this many requests in flight at all times.
  double request_rate = 0;     ///< Open loop: Poisson arrivals at this rate (req/s).
  bool exact_rate = false;     ///< Open loop: `requests` arrivals spread over requests / rate seconds.
  std::uint64_t requests = 0;  ///< Stop issuing after this many (0: no limit).
  double duration_s = 0;       ///< Stop issuing after this long (0: no limit).
  std::uint32_t input_tokens = 0;   ///< Prompt as input_ids of this length (0: use prompt_chars).
  std::uint32_t prompt_chars = 0;   ///< Prompt as text of this length.
  std::uint32_t output_tokens = 16;  ///< max_new_tokens / max_tokens, with ignore_eos.
  bool check_tokens = true;          ///< Require exactly output_tokens generated tokens.
  bool return_logprob = false;
  std::string model = "default";
  unsigned threads = 1;
  double connect_timeout_s = 10;
  double idle_timeout_s = 120;  ///< Longest silence while waiting for response bytes.
  std::optional<std::uint64_t> seed;  ///< Seed of the arrival times and rooms (default: the clock).

  /// Direct PD: no proxy; the bench adds the bootstrap fields and sends to both workers itself.
  bool direct_pd = false;
  std::string prefill_url;
  std::uint16_t bootstrap_port = 0;
  std::string decode_url;
};

/// Counts and samples of a run (all in milliseconds).
struct bench_result {
  std::uint64_t ok = 0;
  std::uint64_t failed = 0;
  std::map<std::string, std::uint64_t> errors;  ///< Failure reason -> count.
  double duration_s = 0;
  std::uint64_t input_tokens = 0;   ///< Sum over successful requests.
  std::uint64_t output_tokens = 0;  ///< Sum over successful requests.
  std::uint64_t events = 0;         ///< Stream events received (successful requests).
  std::uint64_t bytes = 0;          ///< Response body bytes received (all requests).
  std::uint64_t peak_in_flight = 0;  ///< Most requests in flight at once.
  std::vector<float> ttft, itl, tpot, e2e;
  /// Send time of each successful request, ms after the run started (same order as ttft and e2e).
  std::vector<float> send;
  /// Event delivery delay: arrival time minus the worker's e2e_latency when it made the event
  /// (includes the request's trip to the worker; compare contenders, not absolute values).
  std::vector<float> lag;
  /// Event jitter: each event's delay minus the first event's delay of the same stream, i.e. how much
  /// later than the worker's own spacing it arrived (no request trip in it).
  std::vector<float> jitter;
  /// One-way event latency: receive time (steady_clock, taken when the read completed, before
  /// parsing) minus the worker's write time meta_info.sim_write_ns (pdlb-sim --stamp-events).
  std::vector<float> event_latency;
};

/// The request body the bench sends (without the bootstrap fields of direct PD).
std::string build_body(const bench_options& opts);

/// Runs the benchmark. Throws std::runtime_error for bad options (before any request).
bench_result run_bench(const bench_options& opts);

}  // namespace pdlb::bench
