// Micro-benchmark of the request hot path: inspect + rewrite of a large /generate body, and the
// per-event logprob merge of a long prefill list. Not a test; run it by hand on a quiet machine:
//
//   g++ -std=c++20 -O2 -DNDEBUG -Iinclude -o /tmp/micro_rewrite bench/micro_rewrite.cpp src/json_scan.cpp
//       src/rewrite.cpp src/json_escape.cpp src/logprob_merge.cpp src/sse.cpp -lsimdjson  (one line)
//   /tmp/micro_rewrite
//
// It also times simdjson (Debian libsimdjson-dev) doing inspect's job on the same body (validate the
// whole document, read `stream`), which is why pdlb has its own scanner.
//
// Each line prints the median over several batches of the thread CPU time per call, so neither time
// spent descheduled nor one noisy batch (a build on the same two cores) decides the result.
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <simdjson.h>

#include "pdlb/logprob_merge.hpp"
#include "pdlb/rewrite.hpp"
#include "pdlb/sse.hpp"

namespace {

double thread_cpu_us() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

template <class F>
double median_us(F&& f, int iterations) {
  std::vector<double> batches;
  for (int b = 0; b < 9; ++b) {
    const double t0 = thread_cpu_us();
    for (int i = 0; i < iterations; ++i) f();
    batches.push_back((thread_cpu_us() - t0) / iterations);
  }
  std::sort(batches.begin(), batches.end());
  return batches[batches.size() / 2];
}

volatile std::size_t sink;

}  // namespace

int main() {
  // A benchmark-style /generate body: 8000 token ids as Python's json.dumps writes them.
  std::mt19937 rng(2024);
  std::string body = "{\"input_ids\": [";
  for (int i = 0; i < 8000; ++i) {
    if (i) body += ", ";
    body += std::to_string(rng() % 30000);
  }
  body += "], \"sampling_params\": {\"temperature\": 0.0, \"max_new_tokens\": 128, \"ignore_eos\": true}, "
          "\"stream\": true}";

  const pdlb::bootstrap_fields boot{"10.0.0.1", 8998};
  const std::uint64_t room = 4611686018427387904ULL;
  pdlb::request_info info;
  std::string error, out;
  if (!pdlb::inspect_request(body, pdlb::route_kind::generate, info, error)) {
    std::fprintf(stderr, "inspect failed: %s\n", error.c_str());
    return 1;
  }

  const double inspect = median_us(
      [&] {
        pdlb::inspect_request(body, pdlb::route_kind::generate, info, error);
        sink = info.members.size();
      },
      2000);
  const double rewrite = median_us(
      [&] {
        out.clear();
        pdlb::rewrite_request(body, info, boot, std::span<const std::uint64_t>(&room, 1), out);
        sink = out.size();
      },
      2000);
  const double both = median_us(
      [&] {
        pdlb::inspect_request(body, pdlb::route_kind::generate, info, error);
        sink = pdlb::rewrite_request(body, info, boot, std::span<const std::uint64_t>(&room, 1)).size();
      },
      2000);
  std::printf("body %zu bytes: inspect %.2f us, rewrite %.2f us, inspect+rewrite (fresh string) %.2f us\n",
              body.size(), inspect, rewrite, both);

  // simdjson on the same job: a DOM parse validates the whole document (as inspect does), then the
  // `stream` member is read. The parser is reused, as a server would keep one per thread.
  simdjson::dom::parser parser;
  const simdjson::padded_string padded(body);
  const double simd = median_us(
      [&] {
        simdjson::dom::element doc;
        bool stream = false;
        if (parser.parse(padded).get(doc) == simdjson::SUCCESS && doc["stream"].get(stream)) stream = false;
        sink = stream;
      },
      2000);
  // simdjson's on-demand API reads only what is asked and does not validate the rest: faster, but
  // not the same job (a malformed body would be forwarded to both workers).
  simdjson::ondemand::parser od;
  const double on_demand = median_us(
      [&] {
        auto doc = od.iterate(padded);
        bool stream = false;
        if (doc["stream"].get(stream)) stream = false;
        sink = stream;
      },
      2000);
  std::printf("simdjson %s on the same body: DOM parse + stream %.2f us; on-demand stream only (no "
              "validation) %.2f us\n",
              simdjson::get_active_implementation()->name().c_str(), simd, on_demand);

  // A prefill stream's first event with 8000 input-token logprobs, and a small decode event.
  std::string list;
  for (int i = 0; i < 8000; ++i) {
    if (i) list += ", ";
    list += "[" + std::to_string(-static_cast<double>(rng() % 100000) / 7919.0) + ", " +
            std::to_string(rng() % 30000) + ", null]";
  }
  const std::string prefill_event =
      "{\"text\": \"\", \"meta_info\": {\"id\": \"abc\", \"prompt_tokens\": 8000, \"input_token_logprobs\": [" +
      list + "]}}";
  const std::string decode_event =
      "{\"text\": \" the\", \"meta_info\": {\"id\": \"abc\", \"completion_tokens\": 1, "
      "\"input_token_logprobs\": [[-0.25, 17, null]], \"output_token_logprobs\": [[-0.5, 279, null]]}, "
      "\"index\": 0}";
  pdlb::prefill_logprobs prefill;
  const double collect = median_us(
      [&] {
        prefill.items.clear();
        pdlb::collect_stream_logprobs(prefill_event, prefill);
      },
      200);
  const double merge = median_us(
      [&] { sink = pdlb::merge_event_logprobs(decode_event, prefill).value_or("").size(); }, 2000);
  std::printf("prefill event %zu bytes: collect %.2f us; merge into a %zu-byte event %.2f us\n",
              prefill_event.size(), collect, decode_event.size(), merge);

  // The relay's framing cost for an ordinary small event.
  const std::string events = "data: " + decode_event + "\n\n";
  pdlb::sse_splitter splitter;
  const double split = median_us(
      [&] {
        splitter.feed(events);
        while (auto ev = splitter.next_event()) sink = pdlb::event_data(*ev)->size();
      },
      20000);
  std::printf("SSE split + event_data of a %zu-byte event: %.3f us\n", events.size(), split);
  return 0;
}
