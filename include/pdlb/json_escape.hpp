// Writing JSON strings by hand on the hot path, without a JSON library.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace pdlb {

// Length of the valid UTF-8 sequence at p (p[0] >= 0x80), or 0 if invalid (Unicode table 3-7: no
// overlong forms, no surrogates, nothing above U+10FFFF).
inline int utf8_sequence_length(const unsigned char* p, const unsigned char* end) {
  const unsigned c = p[0];
  auto cont = [&](std::ptrdiff_t i, unsigned lo, unsigned hi) {
    return p + i < end && p[i] >= lo && p[i] <= hi;
  };
  if (c >= 0xC2 && c <= 0xDF) return cont(1, 0x80, 0xBF) ? 2 : 0;
  if (c == 0xE0) return cont(1, 0xA0, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
    return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xF0) return cont(1, 0x90, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3)
    return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  return 0;
}

/// Appends `s` to `out` as a quoted JSON string: quotes, backslashes and control characters are
/// escaped, valid UTF-8 is copied, and every byte that is not part of a valid UTF-8 sequence becomes
/// U+FFFD, so the result is always valid JSON (error messages quote request paths and workers'
/// answers, which may be anything).
void append_json_string(std::string& out, std::string_view s);

/// `s` as a quoted JSON string.
std::string json_string(std::string_view s);

/// A `{"error":{"message":...}}` JSON body, with the message escaped.
std::string json_error_body(std::string_view message);

/// A worker's answer shortened for an error message: at most 512 bytes, cut on a UTF-8 character
/// boundary, with "..." when cut.
std::string error_snippet(std::string_view body);

}  // namespace pdlb
