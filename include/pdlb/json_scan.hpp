// A validating, allocation-free JSON scanner for the request hot path.
//
// pdlb never builds a DOM for a request body: it validates the bytes once, remembers where the
// top-level members are, and later splices bytes. The scanner is strict RFC 8259 (UTF-8 checked inside
// strings, no NaN/Infinity, no comments, no trailing commas, no byte order mark), iterative (nesting is
// capped at `max_json_depth` instead of recursing), and has SIMD fast paths for the two things large
// bodies are made of: long strings and long arrays of integers (token ids).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pdlb {

/// The six JSON value kinds.
enum class json_type : std::uint8_t { null_, boolean, number, string, array, object };

/// Deepest nesting of arrays and objects the scanner accepts; deeper documents are an error.
inline constexpr std::size_t max_json_depth = 1000;

/// The bit for `t` in a `json_array_shape` type set.
constexpr std::uint8_t json_type_bit(json_type t) { return static_cast<std::uint8_t>(1u << static_cast<unsigned>(t)); }

/// What an array value holds, gathered during the scan so that checks such as "a list of strings" or
/// "a list of lists of integers" cost nothing extra on a 50 KB body. Zero-initialised for non-arrays.
struct json_array_shape {
  /// Number of elements.
  std::size_t count = 0;
  /// Union of `json_type_bit` over the elements.
  std::uint8_t item_types = 0;
  /// True when no element is a number with a fraction or an exponent.
  bool items_integral = true;
  /// Union of `json_type_bit` over the elements of the elements that are arrays.
  std::uint8_t sub_item_types = 0;
  /// True when no element of an element that is an array is a non-integral number.
  bool sub_items_integral = true;
  /// True when some element is an empty array.
  bool has_empty_sub_array = false;
};

/// One member of an object, as byte offsets into the scanned document.
struct json_member {
  /// The key's raw text between its quotes; escapes are not decoded.
  std::string_view key_raw;
  /// Span of `"key":value` (from the key's opening quote to the end of the value).
  std::size_t member_begin = 0, member_end = 0;
  /// Span of the value.
  std::size_t value_begin = 0, value_end = 0;
  /// The value's kind.
  json_type type = json_type::null_;
  /// For array values: element count and element kinds.
  json_array_shape shape;
};

/// A value's span and kind inside a document (used for array elements).
struct json_value_span {
  /// Byte span of the value.
  std::size_t begin = 0, end = 0;
  /// The value's kind.
  json_type type = json_type::null_;
};

/// Validates a whole JSON document (any top-level value; whitespace around it is allowed). On success,
/// when the top-level value is an object and `top` is not null, fills `top` with its members in
/// document order (duplicates kept) and returns true. On failure returns false and, when `error` is
/// not null, sets a message such as "invalid JSON at byte 123: expected ',' or '}'".
bool scan_json(std::string_view doc, std::vector<json_member>* top, std::string* error,
               json_type* root_type = nullptr);

/// The members of the object whose text is `doc[begin, end)`, with offsets into `doc`. Returns false
/// (and leaves `out` cleared) if that text is not one valid JSON object.
bool object_members(std::string_view doc, std::size_t begin, std::size_t end, std::vector<json_member>& out);

/// The elements of the array whose text is `doc[begin, end)`, with offsets into `doc`. Returns false if
/// that text is not one valid JSON array.
bool array_elements(std::string_view doc, std::size_t begin, std::size_t end, std::vector<json_value_span>& out);

/// Decodes the raw text of a JSON string (between the quotes, already validated) into UTF-8. Lone
/// surrogate escapes become U+FFFD. Returns nullopt if the text is not a valid JSON string body.
std::optional<std::string> decode_json_string(std::string_view raw);

/// Whether a raw key (escapes not decoded) names `key`; cheap unless the raw key contains escapes.
bool json_key_equals(std::string_view key_raw, std::string_view key);

/// The last member named `key` (JSON parsers such as Python's keep the last duplicate), or null.
const json_member* find_member(const std::vector<json_member>& members, std::string_view key);

/// True when `number_text` (a valid JSON number) has no fraction and no exponent.
bool json_number_is_integer(std::string_view number_text);

/// `text` without leading and trailing JSON whitespace.
std::string_view trim_json_whitespace(std::string_view text);

/// `out.append(bytes)` for splicing large bodies. glibc copies blocks above ~2 KB with `rep movsb`,
/// which on the AMD EPYC machines we measured runs 20 times slower when the destination sits 1 to 31
/// bytes past the source modulo 4096; copying in 2 KB pieces keeps to the vector path at any alignment.
void append_spliced(std::string& out, std::string_view bytes);

}  // namespace pdlb
