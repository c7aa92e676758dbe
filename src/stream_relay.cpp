#include "pdlb/stream_relay.hpp"

#include "pdlb/json_escape.hpp"

namespace pdlb {

relay_output stream_relay::feed(std::string_view bytes, bool end) {
  return prefill_ ? feed_merging(bytes, end) : feed_plain(bytes, end);
}

// Whole events are forwarded straight from `bytes`; only a partial event is copied (held back), and
// when one was held, the output starts with it (its rest is at the start of `bytes`).
relay_output stream_relay::feed_plain(std::string_view bytes, bool end) {
  // The last event end in `bytes`. Found past its first 4 bytes, it is the last one in the held bytes
  // and `bytes` together: the walk back looks at most 3 bytes behind a line end.
  const std::size_t whole = end ? bytes.size() : complete_prefix_length(bytes);
  if (end || whole > 4 || (pending_.empty() && whole > 0)) {
    out_.swap(pending_);  // the held bytes, if any, valid until the next call
    pending_.assign(bytes.substr(whole));
    return {out_, bytes.substr(0, whole)};
  }
  if (pending_.empty()) {
    pending_.assign(bytes);  // no event ends here
    return {};
  }
  // An event may end in the first bytes, depending on the held ones: look at them together (this
  // copies `bytes`, at most a partial event beyond those 4 bytes, which would be held anyway).
  const std::size_t searched = pending_.size() > 3 ? pending_.size() - 3 : 0;
  pending_.append(bytes);
  const std::size_t joint = complete_prefix_length(pending_, searched);
  out_.assign(pending_, 0, joint);
  pending_.erase(0, joint);
  return {out_, {}};
}

relay_output stream_relay::feed_merging(std::string_view bytes, bool end) {
  splitter_.feed(bytes);
  out_.clear();
  while (auto ev = splitter_.next_event()) {
    auto data = event_data(*ev, data_);  // a view: no allocation per event
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
  return {out_, {}};
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
    if (auto data = event_data(*ev, data_); data && !is_done_payload(*data))
      collect_stream_logprobs(*data, logprobs_);
  }
}

}  // namespace pdlb
