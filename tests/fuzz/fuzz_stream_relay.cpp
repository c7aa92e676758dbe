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

// Whether `written` is a sequence of whole events. An event may end with a blank line made of a lone
// CR, which complete_prefix_length cannot tell from the start of a CRLF when it is the last byte: it
// is whole if the relay saw the byte after it (the first it holds, at `next` in the stream) and that
// byte is not a LF.
bool whole_events(const std::string& written, const std::string& stream, std::size_t next) {
  if (pdlb::complete_prefix_length(written) == written.size()) return true;
  if (written.empty() || written.back() != '\r' || next >= stream.size() || stream[next] == '\n') return false;
  return pdlb::complete_prefix_length(written + "x") == written.size();
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
    const std::string written = relay.feed(piece, end).str();
    // Before the end only whole events go out (the output so far is a sequence of events).
    if (!end && !whole_events(out + written, stream, at + n - relay.held()))
      fail("a partial event was written before the end", stream);
    out += written;
    at += n;
  }
  if (stream.empty() && !fails) out += relay.feed("", true).str();
  if (!merging && !fails && out != stream) fail("the plain relay changed the stream", stream);
  if (!merging && fails && out.size() + relay.held() != cut) fail("the relay lost or invented bytes", stream);
  if (fails) {
    const std::size_t next = cut - relay.held();
    std::string ev = relay.fail("worker failed");
    if (!whole_events(out, stream, next)) fail("output before the error is not whole events", stream);
    pdlb::sse_splitter s;
    s.feed(ev);
    auto only = s.next_event();
    if (!only || *only != ev || !pdlb::event_data(*only)) fail("the error is not one data event", ev);
  }
  return 0;
}
