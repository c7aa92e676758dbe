// The metrics building blocks: bucket placement, the text format, label escaping, event counting.
#include "pdlb/metrics.hpp"
#include "pdlb/sse.hpp"

#include <gtest/gtest.h>

#include <string>

namespace pdlb {
namespace {

using namespace std::chrono_literals;

TEST(Histogram, ABoundIsInclusiveAndPastTheLastBoundIsInf) {
  EXPECT_EQ(local_histogram::bucket_of(0ns), 0u);
  EXPECT_EQ(local_histogram::bucket_of(1ms), 0u);
  EXPECT_EQ(local_histogram::bucket_of(1ms + 1ns), 1u);
  EXPECT_EQ(local_histogram::bucket_of(240s), latency_bounds.size() - 1);
  EXPECT_EQ(local_histogram::bucket_of(241s), latency_bounds.size());
}

TEST(Histogram, TextIsCumulativeWithSumAndCount) {
  local_histogram h;
  h.observe(2ms);
  h.observe(2ms);
  h.observe(300s);
  local_histogram::snapshot s;
  s.merge(h);
  s.merge(h);  // two threads' worth
  EXPECT_EQ(s.count(), 6u);
  metrics_text out;
  out.family("x_seconds", "histogram", "test");
  out.histogram("x_seconds", "route=\"/a\"", s);
  const std::string& t = out.text();
  EXPECT_NE(t.find("x_seconds_bucket{route=\"/a\",le=\"0.001\"} 0\n"), std::string::npos) << t;
  EXPECT_NE(t.find("x_seconds_bucket{route=\"/a\",le=\"0.005\"} 4\n"), std::string::npos) << t;
  EXPECT_NE(t.find("x_seconds_bucket{route=\"/a\",le=\"240\"} 4\n"), std::string::npos) << t;
  EXPECT_NE(t.find("x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 6\n"), std::string::npos) << t;
  EXPECT_NE(t.find("x_seconds_sum{route=\"/a\"} 600.008\n"), std::string::npos) << t;
  EXPECT_NE(t.find("x_seconds_count{route=\"/a\"} 6\n"), std::string::npos) << t;
  EXPECT_EQ(t.rfind("# HELP x_seconds test\n# TYPE x_seconds histogram\n", 0), 0u) << t;
}

TEST(MetricsText, LabelValuesAreEscaped) {
  std::string l;
  metrics_text::label(l, "worker", "http://a\"b\\c\nd");
  metrics_text::label(l, "role", "decode");
  EXPECT_EQ(l, "worker=\"http://a\\\"b\\\\c\\nd\",role=\"decode\"");
}

TEST(MetricsText, RoutesAndStatusClasses) {
  EXPECT_EQ(route_of("/generate"), route_label::generate);
  EXPECT_EQ(route_of("/v1/chat/completions"), route_label::chat_completions);
  EXPECT_EQ(route_of("/metrics"), route_label::other);
  EXPECT_EQ(status_class_of(200), 1u);
  EXPECT_EQ(status_class_of(404), 3u);
  EXPECT_EQ(status_class_of(503), 4u);
  EXPECT_EQ(status_class_of(0), 4u);
}

TEST(MetricsText, ProcessMetricsAreRead) {
  metrics_text out;
  append_process_metrics(out);
  for (const char* name : {"process_cpu_seconds_total ", "process_start_time_seconds ", "process_resident_memory_bytes ",
                           "process_open_fds ", "process_max_fds "})
    EXPECT_NE(out.text().find(std::string("\n") + name), std::string::npos) << name << "\n" << out.text();
}

TEST(Sse, EventEndsAreCounted) {
  EXPECT_EQ(count_event_ends(""), 0u);
  EXPECT_EQ(count_event_ends("data: a\n\ndata: b\n\n"), 2u);
  EXPECT_EQ(count_event_ends("data: a\n\ndata: b\n"), 1u);
  EXPECT_EQ(count_event_ends("data: [DONE]\n\n"), 1u);
}

TEST(Sse, EventEndsCountedPieceByPieceMatchTheWholeStreamHoweverItIsCut) {
  // A differential check against count_event_ends over the whole: LF runs of every length, cut
  // everywhere (a pair split across pieces, three LFs in a row, empty pieces).
  std::uint64_t x = 88172645463325252ull;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  for (int round = 0; round < 2000; ++round) {
    std::string stream;
    const std::size_t len = next() % 40;
    for (std::size_t i = 0; i < len; ++i) stream.push_back("a\n\n\r"[next() % 4]);
    event_end_counter counter;
    std::size_t sum = 0;
    for (std::size_t at = 0; at <= stream.size();) {
      const std::size_t n = std::min<std::size_t>(stream.size() - at, next() % 5);
      sum += counter.feed(std::string_view(stream).substr(at, n));
      at += n;
      if (n == 0 && at == stream.size()) break;
    }
    ASSERT_EQ(sum, count_event_ends(stream)) << "stream: " << stream;
  }
}

}  // namespace
}  // namespace pdlb
