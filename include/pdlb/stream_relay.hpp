// The stream relay, without sockets: what to write to the client for each piece of the decode
// worker's SSE body, and how a failed stream ends.
//
// Bytes go out as soon as they complete an event: no whole-stream buffering, one write per read,
// and a partial event is held back so that an error event appended after a failure is never
// glued to half an event. With return_logprob the prefill's input-token logprobs are merged into
// each event (logprob_merge). The prefill's own stream is only read for those logprobs
// (prefill_stream_reader).
#pragma once

#include "pdlb/logprob_merge.hpp"
#include "pdlb/sse.hpp"

#include <string>
#include <string_view>

namespace pdlb {

/// What the relay says to write now: `head`, then `tail`, as one piece. The head is what was held
/// back (the start of an event the new bytes complete), the tail a view into the bytes just fed, so
/// that a large read is forwarded without being copied.
struct relay_output {
  std::string_view head;
  std::string_view tail;
  std::size_t size() const { return head.size() + tail.size(); }
  bool empty() const { return size() == 0; }
  std::string str() const { return std::string(head).append(tail); }
};

class stream_relay {
 public:
  /// `prefill`: logprobs to merge into every event (must outlive the relay), or null to forward
  /// the events as they are.
  explicit stream_relay(const prefill_logprobs* prefill = nullptr) : prefill_(prefill) {}

  /// Takes the next bytes of the decode's body and returns what to write now: every event that
  /// they complete, or, when `end` is true, everything held. The views stay valid until the next
  /// call; the tail points into `bytes`.
  relay_output feed(std::string_view bytes, bool end);

  /// What ends a stream that failed after the client got its status line: an error event. A
  /// partial event held back is dropped. The relay is not used after this.
  std::string fail(std::string_view message);

  /// Bytes held back: the start of an event not yet complete.
  std::size_t held() const;

 private:
  relay_output feed_plain(std::string_view bytes, bool end);
  relay_output feed_merging(std::string_view bytes, bool end);

  const prefill_logprobs* prefill_;
  std::string pending_;   // plain relay: a partial event
  sse_splitter splitter_;  // merging relay: events one by one
  std::string data_;       // merging relay: an event's data when it has several lines
  std::string out_;        // what feed() returns as its head
};

/// Reads the prefill worker's stream for its input-token logprobs (the events go nowhere).
class prefill_stream_reader {
 public:
  /// Takes the next bytes of the prefill's body.
  void feed(std::string_view bytes);
  /// The logprobs found so far.
  const prefill_logprobs& logprobs() const { return logprobs_; }
  prefill_logprobs& logprobs() { return logprobs_; }

 private:
  sse_splitter splitter_;
  std::string data_;  // an event's data when it has several lines
  prefill_logprobs logprobs_;
};

}  // namespace pdlb
