// Server-sent-event framing for the streaming relay.
//
// A relay that only forwards needs to know where the last complete event ends (complete_prefix_length)
// so it can pass whole events on without copying each; a relay that merges logprobs needs the events
// one by one (sse_splitter) and their data (event_data). Events end at a blank line, with any of the
// line endings the SSE spec allows ("\n", "\r\n", "\r").
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace pdlb {

/// Incremental SSE framing: feed bytes as they arrive, then take complete events in order.
class sse_splitter {
 public:
  /// Appends bytes. Invalidates views returned by next_event() and pending().
  void feed(std::string_view bytes);

  /// The next complete event's raw text, terminator included; nullopt until one is complete. The view
  /// stays valid until the next feed() or clear().
  std::optional<std::string_view> next_event();

  /// Bytes fed but not yet returned by next_event() (at end of stream: the unterminated tail).
  std::string_view pending() const { return std::string_view(buf_).substr(start_); }

  /// Forgets everything, as for a new stream.
  void clear();

 private:
  std::string buf_;
  /// First byte not yet returned as part of an event.
  std::size_t start_ = 0;
  /// Where the terminator search resumes; everything in [start_, scan_) has been looked at.
  std::size_t scan_ = 0;
  /// scan_ is at the start of a line, so a line ending there makes a blank line.
  bool at_line_start_ = true;
  /// The byte before scan_ is a CR that ended a line: a LF at scan_ completes it as CRLF.
  bool after_cr_ = false;
};

/// Length of the longest prefix of `buffered` that is a sequence of complete events (0 if none).
/// `buffered` must start at an event boundary. Only terminators ending at or after byte `searched` are
/// looked for, so a caller that remembers how much it has already searched stays linear.
std::size_t complete_prefix_length(std::string_view buffered, std::size_t searched = 0);

/// The data of one event: its `data:` lines' values (one leading space stripped) joined with '\n';
/// nullopt if the event has no data line.
std::optional<std::string> event_data(std::string_view event);

/// event_data without allocating for an event with one data line (the usual case): its value is a
/// view into `event`. The values of several lines are joined in `scratch`, and the view is of it.
std::optional<std::string_view> event_data(std::string_view event, std::string& scratch);

/// Number of "\n\n" event terminators in `bytes` (the framing SGLang and OpenAI streams use; events
/// ended by CRLF pairs are not counted), for the relay's event counter.
std::size_t count_event_ends(std::string_view bytes);

/// count_event_ends across the pieces of one stream: the sum of feed() over pieces is the count of
/// their concatenation, however it is cut.
class event_end_counter {
 public:
  std::size_t feed(std::string_view bytes);

 private:
  bool lf_open_ = false;  // the last byte fed is a LF that a LF next would make a terminator
};

/// True for the "[DONE]" sentinel that ends OpenAI-style and SGLang streams.
bool is_done_payload(std::string_view data);

}  // namespace pdlb
