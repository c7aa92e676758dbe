// Prometheus metrics: per-thread counters and histograms, summed when /metrics is scraped.
//
// A request's thread is the only writer of its thread's counters, so an update is a relaxed load
// and store (no read-modify-write, no shared cache line, no lock); a scrape on another thread reads
// them with relaxed loads, which is race-free and at worst a moment old. Label values are fixed
// enums resolved once (a route index, a status class), so counting a request formats nothing and
// allocates nothing. The text exposition format is Prometheus' 0.0.4.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pdlb {

/// A counter with one writer thread and any number of reader threads.
class local_counter {
 public:
  /// Adds `n`; call it on the owning thread only.
  void add(std::uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  /// The value, from any thread.
  std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

/// Latency bucket bounds in seconds, as the SGLang router's (1 ms to 240 s).
inline constexpr std::array<double, 20> latency_bounds = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                          0.5,   1.0,   2.5,  5.0,   10.0, 15.0, 30.0,
                                                          45.0,  60.0,  90.0, 120.0, 180.0, 240.0};

/// A latency histogram with one writer thread: a fixed array of bucket counts (the last is +Inf)
/// and the sum in nanoseconds.
class local_histogram {
 public:
  static constexpr std::size_t buckets = latency_bounds.size() + 1;
  /// Records one observation; call it on the owning thread only.
  void observe(std::chrono::steady_clock::duration d);
  /// Index of the bucket an observation of `d` falls in (not cumulative).
  static std::size_t bucket_of(std::chrono::steady_clock::duration d);

  /// Counts per bucket (not cumulative) and the sum, as read at one moment.
  struct snapshot {
    std::array<std::uint64_t, buckets> counts{};
    std::uint64_t sum_ns = 0;
    std::uint64_t count() const;
    /// Adds another histogram's values (a scrape sums the threads').
    void merge(const local_histogram& h);
  };

 private:
  std::array<local_counter, buckets> counts_;
  local_counter sum_ns_;
};

/// The routes requests are counted by; every other path is `other`.
enum class route_label : std::uint8_t { generate, completions, chat_completions, other, count };
/// The label value of a route ("/generate", ..., "other").
std::string_view to_string(route_label r);
/// The route of a request path.
route_label route_of(std::string_view path);

/// Status classes "1xx".."5xx" (index 0..4); anything else counts as 5xx.
inline constexpr std::size_t status_classes = 5;
inline std::size_t status_class_of(unsigned status) {
  return status >= 100 && status < 600 ? status / 100 - 1 : status_classes - 1;
}

/// Why an attempt was run again on another pair.
enum class retry_reason : std::uint8_t { prefill_failed, decode_failed, decode_status, count };
std::string_view to_string(retry_reason r);

/// Why a leg was stopped before its worker finished.
enum class cancel_reason : std::uint8_t {
  prefill_failed,  ///< The prefill failed or answered an error: the decode leg was stopped.
  decode_failed,   ///< The decode failed or answered an error: the prefill leg was stopped.
  client_gone,     ///< The client left.
  relay_ended,     ///< The decode's stream ended first; the prefill's was still being read.
  count
};
std::string_view to_string(cancel_reason r);

/// One server thread's request metrics (owned by its thread_context).
struct thread_metrics {
  static constexpr std::size_t routes = static_cast<std::size_t>(route_label::count);
  /// Requests answered, by route and status class.
  std::array<std::array<local_counter, status_classes>, routes> requests;
  /// Time from the request's arrival to its handler's end, by route.
  std::array<local_histogram, routes> duration;
  /// Time from the request's arrival to the first byte of the response body, by route.
  std::array<local_histogram, routes> first_byte;
  /// SSE events relayed to clients (blank-line terminators written).
  local_counter stream_events;
  /// Attempts run again, by reason.
  std::array<local_counter, static_cast<std::size_t>(retry_reason::count)> retries;
  /// Legs cancelled, by role (0 prefill, 1 decode) and reason.
  std::array<std::array<local_counter, static_cast<std::size_t>(cancel_reason::count)>, 2> cancelled_legs;
};

/// Builds a text exposition (format 0.0.4): one family header, then its samples.
class metrics_text {
 public:
  /// Starts a family: its # HELP and # TYPE lines.
  void family(std::string_view name, std::string_view type, std::string_view help);
  /// One sample; `labels` are preformatted (`a="x",b="y"`, values escaped with label_value) or empty.
  void sample(std::string_view name, std::string_view labels, double value);
  void sample(std::string_view name, std::string_view labels, std::uint64_t value);
  /// A histogram's _bucket (cumulative, le in seconds), _sum and _count samples.
  void histogram(std::string_view name, std::string_view labels, const local_histogram::snapshot& h);
  /// Appends `name="value"` to `labels` (with a comma if needed), escaping the value.
  static void label(std::string& labels, std::string_view name, std::string_view value);
  const std::string& text() const { return out_; }

 private:
  void sample_head(std::string_view name, std::string_view labels);  // `name{labels} `
  std::string out_;
};

/// The process_* metrics of this process, read from /proc/self (resident and virtual memory, open
/// and maximum fds, CPU seconds, start time).
void append_process_metrics(metrics_text& out);

}  // namespace pdlb
