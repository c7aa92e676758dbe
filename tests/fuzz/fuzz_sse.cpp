// SSE framing: any chunking of a stream gives the same events as feeding it whole, and the stateless
// complete_prefix_length agrees with the splitter.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "pdlb/sse.hpp"

namespace {

void fail(const char* what, std::string_view s) {
  std::fprintf(stderr, "fuzz_sse: %s\n%.*s\n", what, static_cast<int>(s.size()), s.data());
  std::abort();
}

// An event that ended at a CR may, when the stream is cut right after it, lose the LF that completed
// its CRLF to the next read; compare events without it.
std::string normalized(std::string_view ev) {
  if (ev.size() >= 2 && ev.back() == '\n' && ev[ev.size() - 2] == '\r') ev.remove_suffix(1);
  return std::string(ev);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider fdp(data, size);
  const auto seed = fdp.ConsumeIntegral<std::uint32_t>();
  const std::string stream = fdp.ConsumeRemainingBytesAsString();

  pdlb::sse_splitter whole;
  whole.feed(stream);
  std::vector<std::string> events;
  std::size_t event_bytes = 0;
  while (auto ev = whole.next_event()) {
    events.emplace_back(*ev);
    event_bytes += ev->size();
    (void)pdlb::event_data(*ev);
  }
  if (event_bytes + whole.pending().size() != stream.size()) fail("whole feed lost bytes", stream);
  if (pdlb::complete_prefix_length(stream) != event_bytes) fail("complete_prefix_length disagrees", stream);

  pdlb::sse_splitter chunked;
  std::vector<std::string> chunk_events;
  std::uint32_t x = seed | 1;
  for (std::size_t at = 0; at < stream.size();) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    const std::size_t n = std::min<std::size_t>(stream.size() - at, 1 + x % 64);
    chunked.feed(std::string_view(stream).substr(at, n));
    at += n;
    while (auto ev = chunked.next_event()) chunk_events.emplace_back(*ev);
  }
  if (chunk_events.size() != events.size()) fail("chunking changed the number of events", stream);
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (normalized(events[i]) != normalized(chunk_events[i])) fail("chunking changed an event", stream);
    if (pdlb::event_data(events[i]) != pdlb::event_data(chunk_events[i])) fail("chunking changed event data", stream);
  }
  return 0;
}
