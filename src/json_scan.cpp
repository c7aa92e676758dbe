#include "pdlb/json_scan.hpp"

#include "pdlb/json_escape.hpp"

#include <bit>
#include <cstring>

#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace pdlb {
namespace {

constexpr bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
constexpr bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

// Byte classes of 64 input bytes, one bit per byte, for the integer-array fast path.
struct block_masks {
  std::uint64_t digit, comma, space, zero;
};

inline block_masks classify64_scalar(const char* p) {
  block_masks m{0, 0, 0, 0};
  for (int i = 0; i < 64; ++i) {
    auto c = static_cast<unsigned char>(p[i]);
    std::uint64_t bit = std::uint64_t{1} << i;
    if (is_digit(c)) m.digit |= bit;
    if (c == ',') m.comma |= bit;
    if (is_ws(c)) m.space |= bit;
    if (c == '0') m.zero |= bit;
  }
  return m;
}

#if defined(__SSE2__)
inline block_masks classify64_sse2(const char* p) {
  block_masks m{0, 0, 0, 0};
  const __m128i c0 = _mm_set1_epi8('0'), c9 = _mm_set1_epi8(9), comma = _mm_set1_epi8(',');
  const __m128i sp = _mm_set1_epi8(' '), nl = _mm_set1_epi8('\n');
  const __m128i cr = _mm_set1_epi8('\r'), tab = _mm_set1_epi8('\t');
  for (int i = 0; i < 4; ++i) {
    __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i));
    __m128i d = _mm_sub_epi8(x, c0);
    __m128i is_d = _mm_cmpeq_epi8(_mm_min_epu8(d, c9), d);
    __m128i is_s = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, sp), _mm_cmpeq_epi8(x, nl)),
                                _mm_or_si128(_mm_cmpeq_epi8(x, cr), _mm_cmpeq_epi8(x, tab)));
    auto mask16 = [](__m128i v) { return std::uint64_t{static_cast<std::uint16_t>(_mm_movemask_epi8(v))}; };
    const int shift = 16 * i;
    m.digit |= mask16(is_d) << shift;
    m.comma |= mask16(_mm_cmpeq_epi8(x, comma)) << shift;
    m.space |= mask16(is_s) << shift;
    m.zero |= mask16(_mm_cmpeq_epi8(x, c0)) << shift;
  }
  return m;
}
#else
inline block_masks classify64_sse2(const char* p) { return classify64_scalar(p); }
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define PDLB_HAVE_AVX2_PATH 1
__attribute__((target("avx2"), always_inline)) inline std::uint64_t mask64_avx2(__m256i lo, __m256i hi) {
  return static_cast<std::uint32_t>(_mm256_movemask_epi8(lo)) |
         (static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm256_movemask_epi8(hi))) << 32);
}

__attribute__((target("avx2"), always_inline)) inline block_masks classify64_avx2(const char* p) {
  const __m256i c0 = _mm256_set1_epi8('0'), c9 = _mm256_set1_epi8(9), comma = _mm256_set1_epi8(',');
  // pshufb looks each byte's low nibble up in this table; a byte is whitespace exactly when it equals
  // its entry (bytes >= 0x80 read 0 and so never match).
  const __m256i ws_table = _mm256_setr_epi8(' ', -1, -1, -1, -1, -1, -1, -1, -1, '\t', '\n', -1, -1, '\r', -1, -1,
                                            ' ', -1, -1, -1, -1, -1, -1, -1, -1, '\t', '\n', -1, -1, '\r', -1, -1);
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
  const __m256i da = _mm256_sub_epi8(a, c0), db = _mm256_sub_epi8(b, c0);
  block_masks m;
  m.digit = mask64_avx2(_mm256_cmpeq_epi8(_mm256_min_epu8(da, c9), da), _mm256_cmpeq_epi8(_mm256_min_epu8(db, c9), db));
  m.comma = mask64_avx2(_mm256_cmpeq_epi8(a, comma), _mm256_cmpeq_epi8(b, comma));
  m.space = mask64_avx2(_mm256_cmpeq_epi8(_mm256_shuffle_epi8(ws_table, a), a),
                        _mm256_cmpeq_epi8(_mm256_shuffle_epi8(ws_table, b), b));
  m.zero = mask64_avx2(_mm256_cmpeq_epi8(a, c0), _mm256_cmpeq_epi8(b, c0));
  return m;
}
#endif

// What one 64-byte block of an integer run leaves open for the next block.
struct run_carry {
  std::uint64_t digit = 0;       // the last byte was a digit
  std::uint64_t lead_zero = 0;   // the last byte was a '0' starting a number
  std::uint64_t comma = 1;       // a comma (or the run's start) still waits for its next significant byte
  std::uint64_t number = 0;      // a number still waits for its comma
};

// Validates one block of `digits ws* , ws*` groups with bit arithmetic. Returns false if the block
// holds any other byte (token ids are never negative, so '-' leaves the fast path too) or breaks the
// grammar; the caller then rewinds to the last comma it accepted.
__attribute__((always_inline)) inline bool check_integer_block(const block_masks& m, run_carry& carry) {
  const std::uint64_t d = m.digit, c = m.comma, s = m.space;
  if (~(d | c | s) != 0) return false;
  const std::uint64_t d_before = (d << 1) | carry.digit;  // bit i: byte i-1 is a digit
  const std::uint64_t starts = d & ~d_before;
  const std::uint64_t lead_zero = m.zero & starts;
  std::uint64_t err = ((lead_zero << 1) | carry.lead_zero) & d;  // a leading zero followed by a digit
  // Adding a bit to the whitespace mask carries it through the whitespace run it starts, so it lands
  // on the next significant byte: after each comma that must begin a number, after each number a comma.
  std::uint64_t after_comma;
  const bool comma_out = __builtin_add_overflow((c << 1) | carry.comma, s, &after_comma);
  err |= after_comma & ~s & ~starts;
  std::uint64_t after_number;
  const bool number_out = __builtin_add_overflow((~d & d_before) | carry.number, s, &after_number);
  err |= after_number & ~s & ~c;
  carry.digit = d >> 63;
  carry.lead_zero = lead_zero >> 63;
  carry.comma = (c >> 63) | static_cast<std::uint64_t>(comma_out);
  carry.number = static_cast<std::uint64_t>(number_out);
  return err == 0;
}

// Fast path for long arrays of integers such as `input_ids`. It starts where an array element begins
// (a digit) and validates fixed 64-byte blocks, carrying a few bits between them so blocks do not wait
// on each other. It stops at the first block that holds anything else (the closing bracket, a float)
// and rewinds `p` to just after the last comma of the accepted blocks, so the scalar scanner rescans
// the tail and reports any error at its exact byte. Returns the number of elements consumed.
#define PDLB_INTEGER_RUN_BODY(classify)                                       \
  std::size_t n = 0;                                                          \
  const char* resume = p;                                                     \
  run_carry carry;                                                            \
  for (const char* q = p; end - q >= 64; q += 64) {                           \
    const block_masks m = classify(q);                                        \
    if (!check_integer_block(m, carry)) break;                                \
    if (m.comma != 0) {                                                       \
      n += static_cast<std::size_t>(std::popcount(m.comma));                  \
      resume = q + (64 - std::countl_zero(m.comma));                          \
    }                                                                         \
  }                                                                           \
  p = resume;                                                                 \
  return n;

std::size_t scan_integer_run_generic(const char*& p, const char* end) { PDLB_INTEGER_RUN_BODY(classify64_sse2) }

#if defined(PDLB_HAVE_AVX2_PATH)
__attribute__((target("avx2,popcnt"))) std::size_t scan_integer_run_avx2(const char*& p, const char* end) {
  PDLB_INTEGER_RUN_BODY(classify64_avx2)
}
const bool cpu_has_avx2 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}();
#endif
#undef PDLB_INTEGER_RUN_BODY

std::size_t scan_integer_run(const char*& p, const char* end) {
#if defined(PDLB_HAVE_AVX2_PATH)
  if (cpu_has_avx2) return scan_integer_run_avx2(p, end);
#endif
  return scan_integer_run_generic(p, end);
}

enum class scan_error : std::uint8_t {
  none,
  expected_value,
  expected_comma_or_brace,
  expected_comma_or_bracket,
  expected_key,
  expected_colon,
  unterminated_string,
  control_char,
  bad_escape,
  bad_utf8,
  bad_number,
  bad_literal,
  trailing_data,
  too_deep,
  byte_order_mark,
};

const char* describe(scan_error e) {
  switch (e) {
    case scan_error::none: return "no error";
    case scan_error::expected_value: return "expected a value";
    case scan_error::expected_comma_or_brace: return "expected ',' or '}'";
    case scan_error::expected_comma_or_bracket: return "expected ',' or ']'";
    case scan_error::expected_key: return "expected a string key";
    case scan_error::expected_colon: return "expected ':'";
    case scan_error::unterminated_string: return "unterminated string";
    case scan_error::control_char: return "unescaped control character in string";
    case scan_error::bad_escape: return "invalid escape sequence in string";
    case scan_error::bad_utf8: return "invalid UTF-8 in string";
    case scan_error::bad_number: return "invalid number";
    case scan_error::bad_literal: return "invalid literal";
    case scan_error::trailing_data: return "unexpected data after the JSON value";
    case scan_error::too_deep: return "nesting deeper than 1000";
    case scan_error::byte_order_mark: return "a byte order mark is not allowed";
  }
  return "error";
}

constexpr int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Nesting kinds for the explicit stack: one bit per level (1 = object), so no recursion and no heap.
class depth_stack {
 public:
  void set(std::size_t level, bool is_object) {
    const std::uint64_t bit = std::uint64_t{1} << (level & 63);
    if (is_object) {
      bits_[level >> 6] |= bit;
    } else {
      bits_[level >> 6] &= ~bit;
    }
  }
  bool is_object(std::size_t level) const { return (bits_[level >> 6] >> (level & 63)) & 1; }

 private:
  std::uint64_t bits_[(max_json_depth + 64) / 64 + 1] = {};
};

class scanner {
 public:
  scanner(std::string_view doc, std::size_t begin, std::size_t end)
      : base_(reinterpret_cast<const unsigned char*>(doc.data())), p_(base_ + begin), end_(base_ + end) {}

  std::size_t offset() const { return static_cast<std::size_t>(p_ - base_); }
  bool at_end() const { return p_ == end_; }
  unsigned char peek() const { return *p_; }

  void skip_ws() {
    while (p_ != end_ && is_ws(*p_)) ++p_;
  }

  bool fail(scan_error e) {
    if (error_ == scan_error::none) {
      error_ = e;
      error_at_ = p_;
    }
    return false;
  }

  std::string message() const {
    const auto at = static_cast<std::size_t>(error_at_ - base_);
    if (error_ == scan_error::too_deep) return describe(error_);
    if (error_ == scan_error::bad_utf8) return "invalid UTF-8 in string at byte " + std::to_string(at);
    return "invalid JSON at byte " + std::to_string(at) + ": " + describe(error_);
  }

  // p_ at the opening quote. On success p_ is just past the closing quote.
  bool scan_string() {
    ++p_;
    for (;;) {
#if defined(__SSE2__)
      // Skip 16 plain ASCII bytes at a time; stop at a quote, backslash, control or non-ASCII byte.
      const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
      while (end_ - p_ >= 16) {
        __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p_));
        __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                                       _mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x));
        unsigned bits = static_cast<unsigned>(_mm_movemask_epi8(special) | _mm_movemask_epi8(x));
        if (bits == 0) {
          p_ += 16;
          continue;
        }
        p_ += std::countr_zero(bits);
        break;
      }
#endif
      if (p_ == end_) return fail(scan_error::unterminated_string);
      const unsigned char c = *p_;
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c == '\\') {
        if (!scan_escape()) return false;
      } else if (c < 0x20) {
        return fail(scan_error::control_char);
      } else if (c >= 0x80) {
        const int n = utf8_sequence_length(p_, end_);
        if (n == 0) return fail(scan_error::bad_utf8);
        p_ += n;
      } else {
        ++p_;
      }
    }
  }

  bool scan_escape() {
    if (end_ - p_ < 2) {
      p_ = end_;
      return fail(scan_error::unterminated_string);
    }
    switch (p_[1]) {
      case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        p_ += 2;
        return true;
      case 'u':
        if (end_ - p_ < 6) return fail(scan_error::bad_escape);
        for (int i = 2; i < 6; ++i) {
          if (hex_value(p_[i]) < 0) return fail(scan_error::bad_escape);
        }
        // Lone surrogates are valid JSON text (RFC 8259 section 8.2), so they pass.
        p_ += 6;
        return true;
      default:
        return fail(scan_error::bad_escape);
    }
  }

  // p_ at '-' or a digit. Sets `integral` to whether there was no fraction and no exponent.
  bool scan_number(bool& integral) {
    if (*p_ == '-') ++p_;
    if (p_ == end_ || !is_digit(*p_)) return fail(scan_error::bad_number);
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ != end_ && is_digit(*p_)) ++p_;
    }
    integral = true;
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !is_digit(*p_)) return fail(scan_error::bad_number);
      while (p_ != end_ && is_digit(*p_)) ++p_;
      integral = false;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !is_digit(*p_)) return fail(scan_error::bad_number);
      while (p_ != end_ && is_digit(*p_)) ++p_;
      integral = false;
    }
    return true;
  }

  bool scan_literal(const char* word, std::size_t n) {
    if (static_cast<std::size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return fail(scan_error::bad_literal);
    p_ += n;
    return true;
  }

  // p_ at the key's opening quote (or wherever a key is expected). Scans `"key" ws : ws`.
  bool scan_key_colon(std::string_view* key) {
    if (p_ == end_ || *p_ != '"') return fail(scan_error::expected_key);
    const unsigned char* k = p_ + 1;
    if (!scan_string()) return false;
    if (key) *key = std::string_view(reinterpret_cast<const char*>(k), static_cast<std::size_t>(p_ - 1 - k));
    skip_ws();
    if (p_ == end_ || *p_ != ':') return fail(scan_error::expected_colon);
    ++p_;
    skip_ws();
    return true;
  }

  // Scans one value starting at p_ (no leading whitespace), iteratively. `depth0` is the nesting level
  // of the value's container in the whole document. Fills `shape` when the value is an array.
  bool scan_value(std::size_t depth0, json_type& type, json_array_shape* shape) {
    std::size_t level = 0;        // containers currently open inside this value
    unsigned fast_cooldown = 0;   // values to parse before trying the integer fast path again
    if (p_ == end_ || *p_ != '[') shape = nullptr;
    for (;;) {
      json_type t;
      bool integral = true, empty = false;
      if (p_ == end_) return fail(scan_error::expected_value);
      switch (*p_) {
        case '{':
        case '[': {
          const bool obj = *p_ == '{';
          if (depth0 + level + 1 > max_json_depth) return fail(scan_error::too_deep);
          ++level;
          stack_.set(level, obj);
          ++p_;
          skip_ws();
          if (p_ != end_ && *p_ == (obj ? '}' : ']')) {
            ++p_;
            --level;
            t = obj ? json_type::object : json_type::array;
            empty = true;
            break;
          }
          if (obj) {
            if (!scan_key_colon(nullptr)) return false;
          } else if (!try_integer_run(level, shape, fast_cooldown)) {
            skip_ws();
          }
          continue;
        }
        case '"':
          if (!scan_string()) return false;
          t = json_type::string;
          break;
        case 't':
          if (!scan_literal("true", 4)) return false;
          t = json_type::boolean;
          break;
        case 'f':
          if (!scan_literal("false", 5)) return false;
          t = json_type::boolean;
          break;
        case 'n':
          if (!scan_literal("null", 4)) return false;
          t = json_type::null_;
          break;
        default:
          if (*p_ != '-' && !is_digit(*p_)) return fail(scan_error::expected_value);
          if (!scan_number(integral)) return false;
          t = json_type::number;
          break;
      }
      // A value of kind `t` is complete; close containers for as long as they end here.
      for (;;) {
        if (level == 0) {
          type = t;
          return true;
        }
        if (shape) note_element(level, t, integral, empty, *shape);
        skip_ws();
        if (p_ == end_) {
          return fail(stack_.is_object(level) ? scan_error::expected_comma_or_brace
                                              : scan_error::expected_comma_or_bracket);
        }
        const bool obj = stack_.is_object(level);
        if (*p_ == ',') {
          ++p_;
          skip_ws();
          if (obj) {
            if (!scan_key_colon(nullptr)) return false;
          } else if (try_integer_run(level, shape, fast_cooldown)) {
            // The run ended after a comma; the next element follows.
          }
          skip_ws();
          break;
        }
        if (*p_ != (obj ? '}' : ']')) {
          return fail(obj ? scan_error::expected_comma_or_brace : scan_error::expected_comma_or_bracket);
        }
        ++p_;
        --level;
        t = obj ? json_type::object : json_type::array;
        integral = true;
        empty = false;
      }
    }
  }

  // Called where an array element is expected. Returns true if the fast path consumed elements.
  bool try_integer_run(std::size_t level, json_array_shape* shape, unsigned& cooldown) {
    if (p_ == end_ || !is_digit(*p_) || end_ - p_ < 64) return false;
    if (cooldown > 0) {
      --cooldown;
      return false;
    }
    const char* p = reinterpret_cast<const char*>(p_);
    const std::size_t n = scan_integer_run(p, reinterpret_cast<const char*>(end_));
    if (n == 0) {
      // Mostly floats or short arrays here: stop paying for the attempt on every element.
      cooldown = 32;
      return false;
    }
    p_ = reinterpret_cast<const unsigned char*>(p);
    if (shape) {
      if (level == 1) {
        shape->count += n;
        shape->item_types |= json_type_bit(json_type::number);
      } else if (level == 2 && !stack_.is_object(2)) {
        shape->sub_item_types |= json_type_bit(json_type::number);
      }
    }
    skip_ws();
    return true;
  }

  void note_element(std::size_t level, json_type t, bool integral, bool empty, json_array_shape& shape) const {
    if (level == 1) {
      ++shape.count;
      shape.item_types |= json_type_bit(t);
      if (t == json_type::number && !integral) shape.items_integral = false;
      if (t == json_type::array && empty) shape.has_empty_sub_array = true;
    } else if (level == 2 && !stack_.is_object(2)) {
      shape.sub_item_types |= json_type_bit(t);
      if (t == json_type::number && !integral) shape.sub_items_integral = false;
    }
  }

  // p_ at '{'. Scans the object, appending its members (offsets into the whole document).
  bool scan_object_members(std::vector<json_member>* out) {
    ++p_;
    skip_ws();
    if (p_ != end_ && *p_ == '}') {
      ++p_;
      return true;
    }
    for (;;) {
      json_member m;
      m.member_begin = offset();
      if (!scan_key_colon(&m.key_raw)) return false;
      m.value_begin = offset();
      if (!scan_value(1, m.type, &m.shape)) return false;
      m.value_end = m.member_end = offset();
      if (out) out->push_back(m);
      skip_ws();
      if (p_ == end_) return fail(scan_error::expected_comma_or_brace);
      if (*p_ == ',') {
        ++p_;
        skip_ws();
        continue;
      }
      if (*p_ != '}') return fail(scan_error::expected_comma_or_brace);
      ++p_;
      return true;
    }
  }

  // p_ at '['. Scans the array, appending its elements' spans.
  bool scan_array_elements(std::vector<json_value_span>& out) {
    ++p_;
    skip_ws();
    if (p_ != end_ && *p_ == ']') {
      ++p_;
      return true;
    }
    for (;;) {
      json_value_span v;
      v.begin = offset();
      if (!scan_value(1, v.type, nullptr)) return false;
      v.end = offset();
      out.push_back(v);
      skip_ws();
      if (p_ == end_) return fail(scan_error::expected_comma_or_bracket);
      if (*p_ == ',') {
        ++p_;
        skip_ws();
        continue;
      }
      if (*p_ != ']') return fail(scan_error::expected_comma_or_bracket);
      ++p_;
      return true;
    }
  }

 private:
  const unsigned char* base_;
  const unsigned char* p_;
  const unsigned char* end_;
  scan_error error_ = scan_error::none;
  const unsigned char* error_at_ = nullptr;
  depth_stack stack_;
};

}  // namespace

bool scan_json(std::string_view doc, std::vector<json_member>* top, std::string* error, json_type* root_type) {
  if (top) top->clear();
  scanner s(doc, 0, doc.size());
  auto failed = [&] {
    if (error) *error = s.message();
    if (top) top->clear();
    return false;
  };
  if (doc.size() >= 3 && std::memcmp(doc.data(), "\xEF\xBB\xBF", 3) == 0) {
    // RFC 8259 lets parsers ignore a BOM; rejecting it keeps the byte offsets we splice at simple
    // and clients that send JSON over HTTP do not add one.
    s.fail(scan_error::byte_order_mark);
    return failed();
  }
  s.skip_ws();
  json_type t;
  if (!s.at_end() && s.peek() == '{') {
    if (!s.scan_object_members(top)) return failed();
    t = json_type::object;
  } else {
    if (!s.scan_value(0, t, nullptr)) return failed();
  }
  s.skip_ws();
  if (!s.at_end()) {
    s.fail(scan_error::trailing_data);
    return failed();
  }
  if (root_type) *root_type = t;
  return true;
}

bool object_members(std::string_view doc, std::size_t begin, std::size_t end, std::vector<json_member>& out) {
  out.clear();
  if (begin >= end || end > doc.size() || doc[begin] != '{') return false;
  scanner s(doc, begin, end);
  if (!s.scan_object_members(&out) || !s.at_end()) {
    out.clear();
    return false;
  }
  return true;
}

bool array_elements(std::string_view doc, std::size_t begin, std::size_t end, std::vector<json_value_span>& out) {
  out.clear();
  if (begin >= end || end > doc.size() || doc[begin] != '[') return false;
  scanner s(doc, begin, end);
  if (!s.scan_array_elements(out) || !s.at_end()) {
    out.clear();
    return false;
  }
  return true;
}

namespace {
void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool read_hex4(std::string_view raw, std::size_t i, std::uint32_t& v) {
  if (i + 4 > raw.size()) return false;
  v = 0;
  for (std::size_t k = 0; k < 4; ++k) {
    const int h = hex_value(static_cast<unsigned char>(raw[i + k]));
    if (h < 0) return false;
    v = v * 16 + static_cast<std::uint32_t>(h);
  }
  return true;
}
}  // namespace

std::optional<std::string> decode_json_string(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size();) {
    const auto c = static_cast<unsigned char>(raw[i]);
    if (c == '"' || c < 0x20) return std::nullopt;
    if (c >= 0x80) {
      const auto* p = reinterpret_cast<const unsigned char*>(raw.data());
      const int n = utf8_sequence_length(p + i, p + raw.size());
      if (n == 0) return std::nullopt;
      out.append(raw.substr(i, static_cast<std::size_t>(n)));
      i += static_cast<std::size_t>(n);
      continue;
    }
    if (c != '\\') {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    if (i + 1 >= raw.size()) return std::nullopt;
    const char e = raw[i + 1];
    i += 2;
    switch (e) {
      case '"': out.push_back('"'); break;
      case '\\': out.push_back('\\'); break;
      case '/': out.push_back('/'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        std::uint32_t cp;
        if (!read_hex4(raw, i, cp)) return std::nullopt;
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          std::uint32_t lo;
          if (i + 6 <= raw.size() && raw[i] == '\\' && raw[i + 1] == 'u' && read_hex4(raw, i + 2, lo) &&
              lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
          } else {
            cp = 0xFFFD;
          }
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          cp = 0xFFFD;
        }
        append_utf8(out, cp);
        break;
      }
      default: return std::nullopt;
    }
  }
  return out;
}

bool json_key_equals(std::string_view key_raw, std::string_view key) {
  if (key_raw.find('\\') == std::string_view::npos) return key_raw == key;
  // An escaped key is at least as long as what it decodes to.
  if (key_raw.size() < key.size()) return false;
  const auto decoded = decode_json_string(key_raw);
  return decoded && *decoded == key;
}

const json_member* find_member(const std::vector<json_member>& members, std::string_view key) {
  for (auto it = members.rbegin(); it != members.rend(); ++it) {
    if (json_key_equals(it->key_raw, key)) return &*it;
  }
  return nullptr;
}

bool json_number_is_integer(std::string_view number_text) {
  return number_text.find_first_of(".eE") == std::string_view::npos;
}

std::string_view trim_json_whitespace(std::string_view text) {
  std::size_t b = 0, e = text.size();
  while (b < e && is_ws(static_cast<unsigned char>(text[b]))) ++b;
  while (e > b && is_ws(static_cast<unsigned char>(text[e - 1]))) --e;
  return text.substr(b, e - b);
}

void append_spliced(std::string& out, std::string_view bytes) {
  constexpr std::size_t piece = 2048;  // below glibc's smallest rep-movsb threshold
  out.reserve(out.size() + bytes.size());
  while (bytes.size() > piece) {
    out.append(bytes.data(), piece);
    bytes.remove_prefix(piece);
  }
  out.append(bytes);
}

}  // namespace pdlb
