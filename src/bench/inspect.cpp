#include "inspect.hpp"

#include <charconv>
#include <cstring>

namespace pdlb::bench {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// First occurrence of `needle` in `hay` at or after `from`, or npos. memmem, not
// string_view::find, which stops at every '"' of a JSON text to compare.
std::size_t find_text(std::string_view hay, std::string_view needle, std::size_t from) {
  if (from > hay.size() || needle.empty()) return std::string_view::npos;
  const void* p = ::memmem(hay.data() + from, hay.size() - from, needle.data(), needle.size());
  return p ? static_cast<std::size_t>(static_cast<const char*>(p) - hay.data())
           : std::string_view::npos;
}

// Position just after `"key":` and any blanks, or npos.
std::size_t value_start(std::string_view json, std::string_view key, std::size_t from = 0) {
  for (std::size_t pos = find_text(json, key, from + (from < json.size() ? 1 : 0));
       pos != std::string_view::npos; pos = find_text(json, key, pos + 1)) {
    if (json[pos - 1] != '"') continue;
    std::size_t i = pos + key.size();
    if (i >= json.size() || json[i] != '"') continue;
    ++i;
    while (i < json.size() && is_space(json[i])) ++i;
    if (i < json.size() && json[i] == ':') {
      ++i;
      while (i < json.size() && is_space(json[i])) ++i;
      return i;
    }
  }
  return std::string_view::npos;
}

template <class T>
std::optional<T> number_at(std::string_view json, std::size_t i) {
  if (i == std::string_view::npos) return std::nullopt;
  T v{};
  auto [p, ec] = std::from_chars(json.data() + i, json.data() + json.size(), v);
  if (ec != std::errc() || p == json.data() + i) return std::nullopt;
  return v;
}

// The number after `"key":`, looked for from `from` on (the meta_info object, say), then from the
// start if it is not there.
template <class T>
std::optional<T> find_number_from(std::string_view json, std::string_view key, std::size_t from) {
  std::size_t i = value_start(json, key, from);
  if (i == std::string_view::npos && from > 0) i = value_start(json, key, 0);
  return number_at<T>(json, i);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// True if the string value starting at json[i] == '"' is not empty.
bool nonempty_string_at(std::string_view json, std::size_t i) {
  return i != std::string_view::npos && i + 1 < json.size() && json[i] == '"' && json[i + 1] != '"';
}

}  // namespace

std::string_view route_path(route_kind kind) {
  switch (kind) {
    case route_kind::generate: return "/generate";
    case route_kind::completions: return "/v1/completions";
    case route_kind::chat: return "/v1/chat/completions";
  }
  return "/generate";
}

std::optional<std::uint64_t> find_uint(std::string_view json, std::string_view key, std::size_t from) {
  return number_at<std::uint64_t>(json, value_start(json, key, from));
}

std::optional<double> find_double(std::string_view json, std::string_view key) {
  return number_at<double>(json, value_start(json, key));
}

std::optional<std::uint64_t> count_array_elements(std::string_view json, std::size_t open) {
  if (open >= json.size() || json[open] != '[') return std::nullopt;
  std::uint64_t count = 0;
  int depth = 0;
  bool in_string = false;
  bool element_open = false;  // a value has started at depth 1 since the last comma
  for (std::size_t i = open; i < json.size(); ++i) {
    char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        if (depth == 1) element_open = true;
        break;
      case '[':
      case '{':
        if (depth == 1) element_open = true;
        ++depth;
        break;
      case ']':
      case '}':
        --depth;
        if (depth == 0) return count + (element_open ? 1 : 0);
        break;
      case ',':
        if (depth == 1) {
          ++count;
          element_open = false;
        }
        break;
      default:
        if (depth == 1 && !is_space(c)) element_open = true;
        break;
    }
  }
  return std::nullopt;
}

event_info inspect_event(std::string_view data, route_kind kind, bool count_logprobs) {
  event_info info;
  std::string_view body = trim(data);
  if (body == "[DONE]") {
    info.done = true;
    return info;
  }
  if (body.substr(0, 1) == "{") {
    std::size_t i = 1;
    while (i < body.size() && is_space(body[i])) ++i;
    if (body.substr(i, 8) == "\"error\":" || body.find("\"object\":\"error\"") != std::string_view::npos) {
      info.error = true;
      return info;
    }
  } else {
    // Neither an object nor the sentinel (generate batches are arrays; the bench does not send them).
    info.error = body.substr(0, 1) != "[";
  }

  if (kind == route_kind::generate) {
    info.token = true;
    // The fields are in meta_info, after the (cumulative) text and output_ids: start there.
    std::size_t meta = value_start(body, "meta_info");
    if (meta == std::string_view::npos) meta = 0;
    info.completion_tokens = find_number_from<std::uint64_t>(body, "completion_tokens", meta);
    info.e2e_latency = find_number_from<double>(body, "e2e_latency", meta);
    info.write_ns = find_number_from<std::int64_t>(body, "sim_write_ns", meta);
    if (count_logprobs) {
      std::size_t i = value_start(body, "input_token_logprobs");
      if (i != std::string_view::npos) info.input_logprobs = count_array_elements(body, i);
    }
    return info;
  }

  // OpenAI routes: the usage chunk (or a whole body) carries completion_tokens under "usage".
  std::size_t usage = value_start(body, "usage");
  if (usage != std::string_view::npos && usage < body.size() && body[usage] == '{')
    info.completion_tokens = find_uint(body, "completion_tokens", usage);
  info.write_ns = number_at<std::int64_t>(body, value_start(body, "sim_write_ns"));
  if (kind == route_kind::completions) {
    info.token = nonempty_string_at(body, value_start(body, "text"));
  } else {
    // A delta with content (the first chunk has only the role, the last only a finish reason);
    // a whole chat body has its text under "message".
    info.token = nonempty_string_at(body, value_start(body, "content"));
  }
  return info;
}

}  // namespace pdlb::bench
