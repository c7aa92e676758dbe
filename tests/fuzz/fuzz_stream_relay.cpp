// The stream relay: however the decode's stream is cut into reads, the client gets exactly the
// stream (no merging), only whole events before the end, and after a failure an error event that
// is never glued to half an event.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pdlb/sse.hpp"
#include "pdlb/stream_relay.hpp"

namespace {

void fail(const char* what, std::string_view s) {
  std::fprintf(stderr, "fuzz_stream_relay: %s\n%.*s\n", what, static_cast<int>(s.size()), s.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider fdp(data, size);
  const auto seed = fdp.ConsumeIntegral<std::uint32_t>();
  const bool fails = fdp.ConsumeBool();
  const bool merging = fdp.ConsumeBool();
  const std::string stream = fdp.ConsumeRemainingBytesAsString();

  pdlb::prefill_logprobs lp;
  lp.items.emplace_back("[-1, 2, null]");
  pdlb::stream_relay relay(merging ? &lp : nullptr);
  std::string out;
  std::uint32_t x = seed | 1;
  const std::size_t cut = fails ? seed % (stream.size() + 1) : stream.size();
  for (std::size_t at = 0; at < cut;) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    const std::size_t n = std::min<std::size_t>(cut - at, 1 + x % 97);
    const bool end = !fails && at + n == cut;
    const std::string piece = stream.substr(at, n);  // its own storage: views into it must not outlive it
    std::string_view written = relay.feed(piece, end);
    // Before the end only whole events go out (the output so far is a sequence of events).
    if (!end && pdlb::complete_prefix_length(out + std::string(written)) != out.size() + written.size())
      fail("a partial event was written before the end", stream);
    out += written;
    at += n;
  }
  if (stream.empty() && !fails) out += relay.feed("", true);
  if (!merging && !fails && out != stream) fail("the plain relay changed the stream", stream);
  if (!merging && fails && out.size() + relay.held() != cut) fail("the relay lost or invented bytes", stream);
  if (fails) {
    std::string ev = relay.fail("worker failed");
    if (pdlb::complete_prefix_length(out) != out.size()) fail("output before the error is not whole events", stream);
    pdlb::sse_splitter s;
    s.feed(ev);
    auto only = s.next_event();
    if (!only || *only != ev || !pdlb::event_data(*only)) fail("the error is not one data event", ev);
  }
  return 0;
}
