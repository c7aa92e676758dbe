#include "pdlb/stream_relay.hpp"

#include "pdlb/json_escape.hpp"

namespace pdlb {

std::string_view stream_relay::feed(std::string_view bytes, bool end) {
  return prefill_ ? feed_merging(bytes, end) : feed_plain(bytes, end);
}

// Whole events are forwarded straight from `bytes` when nothing is held (the usual case: one event
// per read), so the common path copies nothing.
std::string_view stream_relay::feed_plain(std::string_view bytes, bool end) {
  if (pending_.empty()) {
    const std::size_t whole = end ? bytes.size() : complete_prefix_length(bytes);
    pending_.assign(bytes.substr(whole));
    return bytes.substr(0, whole);
  }
  // Bytes were held back: the returned events start with them. out_ keeps them valid until the
  // next call while pending_ takes the new partial tail.
  pending_.append(bytes);
  const std::size_t whole = end ? pending_.size() : complete_prefix_length(pending_);
  out_.assign(pending_, 0, whole);
  pending_.erase(0, whole);
  return out_;
}

std::string_view stream_relay::feed_merging(std::string_view bytes, bool end) {
  splitter_.feed(bytes);
  out_.clear();
  while (auto ev = splitter_.next_event()) {
    auto data = event_data(*ev);
    std::optional<std::string> merged;
    if (data && !is_done_payload(*data)) merged = merge_event_logprobs(*data, *prefill_);
    if (merged) {
      out_ += "data: ";
      out_ += *merged;
      out_ += "\n\n";
    } else {
      out_.append(ev->data(), ev->size());
    }
  }
  if (end) {
    out_.append(splitter_.pending());
    splitter_.clear();
  }
  return out_;
}

std::string stream_relay::fail(std::string_view message) {
  pending_.clear();
  splitter_.clear();
  return "data: " + json_error_body(message) + "\n\n";
}

std::size_t stream_relay::held() const { return prefill_ ? splitter_.pending().size() : pending_.size(); }

void prefill_stream_reader::feed(std::string_view bytes) {
  splitter_.feed(bytes);
  while (auto ev = splitter_.next_event()) {
    if (auto data = event_data(*ev); data && !is_done_payload(*data))
      collect_stream_logprobs(*data, logprobs_);
  }
}

}  // namespace pdlb
