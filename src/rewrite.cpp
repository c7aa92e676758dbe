#include "pdlb/rewrite.hpp"

#include <charconv>

#include "pdlb/json_escape.hpp"

namespace pdlb {
namespace {

constexpr std::string_view bootstrap_keys[] = {"bootstrap_host", "bootstrap_port", "bootstrap_room"};

// Reads an optional boolean member the way minilb's `request.get(key, False)` does for sane clients:
// absent and null mean false. Other types are rejected rather than guessed at with Python truthiness.
bool read_flag(std::string_view body, const std::vector<json_member>& members, std::string_view key, bool& value,
               std::string& error) {
  value = false;
  const json_member* m = find_member(members, key);
  if (!m || m->type == json_type::null_) return true;
  if (m->type != json_type::boolean) {
    error.assign(1, '"').append(key).append("\" must be a boolean");
    return false;
  }
  value = body[m->value_begin] == 't';
  return true;
}

// minilb's _get_request_batch_size, with the malformed shapes it would crash on turned into errors.
bool read_batch_size(const std::vector<json_member>& members, std::optional<std::size_t>& batch, std::string& error) {
  batch.reset();
  const json_member* text = find_member(members, "text");
  if (text && text->type != json_type::null_) {
    if (text->type == json_type::string) return true;
    if (text->type != json_type::array) {
      error = "\"text\" must be a string or a list of strings";
      return false;
    }
    if (text->shape.count == 0) {
      error = "empty batch: \"text\" is an empty list";
      return false;
    }
    if (text->shape.item_types != json_type_bit(json_type::string)) {
      error = "\"text\" must be a string or a list of strings";
      return false;
    }
    batch = text->shape.count;
    return true;
  }
  const json_member* ids = find_member(members, "input_ids");
  if (!ids || ids->type == json_type::null_) return true;
  static constexpr const char* shape_error = "\"input_ids\" must be a list of integers or a list of lists of integers";
  if (ids->type != json_type::array) {
    error = shape_error;
    return false;
  }
  const json_array_shape& s = ids->shape;
  if (s.count == 0) {
    error = "empty batch: \"input_ids\" is an empty list";
    return false;
  }
  if (s.item_types == json_type_bit(json_type::number)) {
    if (!s.items_integral) {
      error = shape_error;
      return false;
    }
    return true;
  }
  if (s.item_types == json_type_bit(json_type::array)) {
    if (s.has_empty_sub_array) {
      error = "empty prompt: \"input_ids\" contains an empty list";
      return false;
    }
    if (s.sub_item_types != json_type_bit(json_type::number) || !s.sub_items_integral) {
      error = shape_error;
      return false;
    }
    batch = s.count;
    return true;
  }
  error = shape_error;
  return false;
}

bool is_bootstrap_key(std::string_view key_raw) {
  // Cheap reject first: every bootstrap key starts with "bootstrap_" unless escaped.
  if (key_raw.size() < 9) return false;
  for (std::string_view k : bootstrap_keys) {
    if (json_key_equals(key_raw, k)) return true;
  }
  return false;
}

void append_uint(std::string& out, std::uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;  // 24 bytes always fit a uint64.
  out.append(buf, end);
}

void append_port(std::string& out, const std::optional<std::uint16_t>& port) {
  if (port) {
    append_uint(out, *port);
  } else {
    out += "null";
  }
}

void append_fields(std::string& out, const request_info& info, const bootstrap_fields& boot,
                   std::span<const std::uint64_t> rooms, bool leading_comma) {
  auto room = [&](std::size_t i) -> std::uint64_t {
    if (rooms.empty()) return 0;
    return i < rooms.size() ? rooms[i] : rooms.back();
  };
  if (leading_comma) out.push_back(',');
  if (!info.batch_size) {
    out += "\"bootstrap_host\":";
    append_json_string(out, boot.host);
    out += ",\"bootstrap_port\":";
    append_port(out, boot.port);
    out += ",\"bootstrap_room\":";
    append_uint(out, room(0));
    return;
  }
  const std::size_t n = *info.batch_size;
  std::string host;
  append_json_string(host, boot.host);
  out += "\"bootstrap_host\":[";
  for (std::size_t i = 0; i < n; ++i) {
    if (i) out.push_back(',');
    out += host;
  }
  out += "],\"bootstrap_port\":[";
  for (std::size_t i = 0; i < n; ++i) {
    if (i) out.push_back(',');
    append_port(out, boot.port);
  }
  out += "],\"bootstrap_room\":[";
  for (std::size_t i = 0; i < n; ++i) {
    if (i) out.push_back(',');
    append_uint(out, room(i));
  }
  out.push_back(']');
}

}  // namespace

bool inspect_request(std::string_view body, route_kind kind, request_info& info, std::string& error) {
  info.stream = false;
  info.return_logprob = false;
  info.batch_size.reset();
  json_type root;
  if (!scan_json(body, &info.members, &error, &root)) return false;
  if (root != json_type::object) {
    info.members.clear();
    error = "request body must be a JSON object";
    return false;
  }
  if (!read_flag(body, info.members, "stream", info.stream, error)) return false;
  if (!read_flag(body, info.members, "return_logprob", info.return_logprob, error)) return false;
  // The OpenAI routes carry one prompt as far as PD is concerned, so their bootstrap fields are scalars.
  if (kind == route_kind::generate && !read_batch_size(info.members, info.batch_size, error)) return false;
  return true;
}

inspect_result inspect_request(std::string_view body, route_kind kind) {
  inspect_result r;
  r.ok = inspect_request(body, kind, r.info, r.error);
  return r;
}

void rewrite_request(std::string_view body, const request_info& info, const bootstrap_fields& boot,
                     std::span<const std::uint64_t> rooms, std::string& out) {
  const std::vector<json_member>& members = info.members;
  const std::size_t n = info.batch_size.value_or(1);
  out.reserve(out.size() + body.size() + 96 + n * (boot.host.size() + 36));
  if (members.empty()) {
    // `{}` (with any whitespace): the fields go right before the closing brace, without a comma.
    const std::size_t close = body.find_last_of('}');
    append_spliced(out, body.substr(0, close));
    append_fields(out, info, boot, rooms, false);
    out.append(body.substr(close));
    return;
  }
  // Copy the kept members with the separator that preceded each in the original (so whitespace
  // survives), merging adjacent ranges so an untouched body is one append.
  std::size_t copy_from = 0, copy_to = members.front().member_begin;
  auto emit = [&](std::size_t from, std::size_t to) {
    if (from == copy_to) {
      copy_to = to;
      return;
    }
    append_spliced(out, body.substr(copy_from, copy_to - copy_from));
    copy_from = from;
    copy_to = to;
  };
  bool any_kept = false;
  for (std::size_t i = 0; i < members.size(); ++i) {
    const json_member& m = members[i];
    if (is_bootstrap_key(m.key_raw)) continue;
    if (any_kept) {
      emit(members[i - 1].member_end, m.member_end);
    } else {
      emit(m.member_begin, m.member_end);
    }
    any_kept = true;
  }
  append_spliced(out, body.substr(copy_from, copy_to - copy_from));
  append_fields(out, info, boot, rooms, any_kept);
  // Whitespace after the last member, the closing brace and anything after it.
  append_spliced(out, body.substr(members.back().member_end));
}

std::string rewrite_request(std::string_view body, const request_info& info, const bootstrap_fields& boot,
                            std::span<const std::uint64_t> rooms) {
  std::string out;
  rewrite_request(body, info, boot, rooms, out);
  return out;
}

}  // namespace pdlb
