#include "pdlb/sse.hpp"

#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace pdlb {
namespace {

constexpr bool is_line_end(char c) { return c == '\n' || c == '\r'; }

// First CR or LF in [p, end), or end. Events carrying logprob lists run to hundreds of kilobytes, so
// look at 16 bytes at a time.
const char* find_line_end(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
  while (end - p >= 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const int bits = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, lf), _mm_cmpeq_epi8(x, cr)));
    if (bits != 0) return p + __builtin_ctz(static_cast<unsigned>(bits));
    p += 16;
  }
#endif
  while (p != end && !is_line_end(*p)) ++p;
  return p;
}

// Whether the bytes just before `at` (and not before `floor`) are a CRLF.
bool crlf_before(const char* data, std::size_t floor, std::size_t at) {
  return at >= floor + 2 && data[at - 1] == '\n' && data[at - 2] == '\r';
}

}  // namespace

void sse_splitter::feed(std::string_view bytes) {
  if (start_ > 0) {
    // Returned events are gone for good; drop them so the buffer only holds the unfinished tail.
    buf_.erase(0, start_);
    scan_ -= start_;
    start_ = 0;
  }
  buf_.append(bytes);
}

std::optional<std::string_view> sse_splitter::next_event() {
  const char* data = buf_.data();
  const std::size_t size = buf_.size();
  while (scan_ < size) {
    const char c = data[scan_];
    if (after_cr_ && c == '\n') {
      // The LF of a CRLF whose CR ended the previous event belongs to that event's terminator.
      after_cr_ = false;
      if (scan_ == start_) ++start_;
      ++scan_;
      continue;
    }
    after_cr_ = false;
    if (!is_line_end(c)) {
      at_line_start_ = false;
      scan_ = static_cast<std::size_t>(find_line_end(data + scan_, data + size) - data);
      continue;
    }
    const bool blank_line = at_line_start_;
    if (blank_line && c == '\r' && scan_ + 1 == size && crlf_before(data, start_, scan_)) {
      // "\r\n\r" at the end of what we have: in a CRLF stream the LF is almost surely in the next
      // read, so wait for it rather than emit an event whose terminator depends on read boundaries.
      return std::nullopt;
    }
    ++scan_;
    at_line_start_ = true;
    if (c == '\r') {
      if (scan_ < size && data[scan_] == '\n') {
        ++scan_;
      } else {
        after_cr_ = true;
      }
    }
    if (blank_line) {
      std::string_view event(data + start_, scan_ - start_);
      start_ = scan_;
      return event;
    }
  }
  return std::nullopt;
}

void sse_splitter::clear() {
  buf_.clear();
  start_ = scan_ = 0;
  at_line_start_ = true;
  after_cr_ = false;
}

std::size_t complete_prefix_length(std::string_view buffered, std::size_t searched) {
  // Walk back from the end to the last line ending that directly follows another line ending (or the
  // start): that blank line ends the last complete event. Streams end their events with "\n\n", so
  // this usually stops at once.
  const char* data = buffered.data();
  std::size_t i = buffered.size();
  while (i > searched) {
    --i;
    const char c = data[i];
    if (!is_line_end(c)) continue;
    // A CR followed by a LF is the first half of a CRLF that ends at i + 1, already looked at.
    if (c == '\r' && i + 1 < buffered.size() && data[i + 1] == '\n') continue;
    const std::size_t token_begin = (c == '\n' && i > 0 && data[i - 1] == '\r') ? i - 1 : i;
    if (token_begin != 0 && !is_line_end(data[token_begin - 1])) continue;
    // Like sse_splitter, a final "\r\n\r" waits for its LF, unless that CRLF was itself a blank
    // line (it follows a line end or the start), which makes the CR the start of a new event.
    if (c == '\r' && i + 1 == buffered.size() && crlf_before(data, 0, i) && i >= 3 && !is_line_end(data[i - 3])) {
      continue;
    }
    return i + 1;
  }
  return 0;
}

namespace {

// Calls `on_value` with the value of each `data:` line of `event` (one leading space stripped), up to
// the blank line that ends it.
template <class OnValue>
void for_each_data_value(std::string_view event, OnValue on_value) {
  const char* p = event.data();
  const char* const end = p + event.size();
  while (p != end) {
    const char* eol = find_line_end(p, end);
    const std::string_view line(p, static_cast<std::size_t>(eol - p));
    p = eol;
    if (p != end) p += (*p == '\r' && p + 1 != end && p[1] == '\n') ? 2 : 1;
    if (line.empty()) break;  // the blank line ends the event
    const std::size_t colon = line.find(':');
    if (line.substr(0, colon) != "data") continue;  // comments (":...") and other fields
    std::string_view value = colon == std::string_view::npos ? std::string_view{} : line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    on_value(value);
  }
}

}  // namespace

std::optional<std::string_view> event_data(std::string_view event, std::string& scratch) {
  std::string_view first;
  std::size_t lines = 0;
  for_each_data_value(event, [&](std::string_view value) {
    if (++lines == 1) {
      first = value;
      return;
    }
    if (lines == 2) scratch.assign(first);
    scratch.push_back('\n');
    scratch.append(value);
  });
  if (lines == 0) return std::nullopt;
  return lines == 1 ? first : std::string_view(scratch);
}

std::optional<std::string> event_data(std::string_view event) {
  std::string scratch;
  auto data = event_data(event, scratch);
  if (!data) return std::nullopt;
  return std::string(*data);
}

bool is_done_payload(std::string_view data) {
  while (!data.empty() && (data.front() == ' ' || data.front() == '\t')) data.remove_prefix(1);
  while (!data.empty() && (data.back() == ' ' || data.back() == '\t' || is_line_end(data.back()))) {
    data.remove_suffix(1);
  }
  return data == "[DONE]";
}

std::size_t count_event_ends(std::string_view bytes) { return event_end_counter().feed(bytes); }

std::size_t event_end_counter::feed(std::string_view bytes) {
  if (bytes.empty()) return 0;
  std::size_t n = 0;
  std::size_t counted_to = 0;  // just past the last terminator counted
  if (lf_open_ && bytes[0] == '\n') {
    n = 1;
    counted_to = 1;
  }
  for (auto pos = bytes.find("\n\n", counted_to); pos != std::string_view::npos; pos = bytes.find("\n\n", pos + 2)) {
    ++n;
    counted_to = pos + 2;
  }
  lf_open_ = bytes.back() == '\n' && counted_to < bytes.size();
  return n;
}

}  // namespace pdlb
