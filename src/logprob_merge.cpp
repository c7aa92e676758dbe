#include "pdlb/logprob_merge.hpp"

#include <charconv>

#include "pdlb/json_scan.hpp"

namespace pdlb {
namespace {

// Stream indexes come from our own backends, but a bogus huge one must not make us allocate for it.
constexpr std::size_t max_stream_index = 1 << 16;

struct span {
  std::size_t begin = 0, end = 0;
};

// The span of meta_info.input_token_logprobs (an array) among an item object's members; meta_info is
// looked up only at the item's top level and the list only directly inside meta_info, as minilb does.
std::optional<span> find_list(std::string_view doc, const std::vector<json_member>& item_members,
                              std::vector<json_member>& scratch) {
  const json_member* meta = find_member(item_members, "meta_info");
  if (!meta || meta->type != json_type::object) return std::nullopt;
  if (!object_members(doc, meta->value_begin, meta->value_end, scratch)) return std::nullopt;
  const json_member* list = find_member(scratch, "input_token_logprobs");
  if (!list || list->type != json_type::array) return std::nullopt;
  return span{list->value_begin, list->value_end};
}

std::optional<span> find_list_in_object(std::string_view doc, span item, std::vector<json_member>& members,
                                        std::vector<json_member>& scratch) {
  if (!object_members(doc, item.begin, item.end, members)) return std::nullopt;
  return find_list(doc, members, scratch);
}

std::string_view list_elements(std::string_view doc, span list) {
  return trim_json_whitespace(doc.substr(list.begin + 1, list.end - list.begin - 2));
}

std::string copy_of(std::string_view bytes) {
  std::string s;
  append_spliced(s, bytes);
  return s;
}

// Appends `[prefill, decode]` as one list; either side may be empty.
void append_merged(std::string& out, std::string_view prefill, std::string_view decode) {
  out.push_back('[');
  append_spliced(out, prefill);
  if (!prefill.empty() && !decode.empty()) out.push_back(',');
  append_spliced(out, decode);
  out.push_back(']');
}

struct splice {
  span list;
  const std::string* prefill;
};

std::string apply_splices(std::string_view doc, const std::vector<splice>& splices) {
  std::size_t extra = 2;
  for (const splice& s : splices) extra += s.prefill->size() + 1;
  std::string out;
  out.reserve(doc.size() + extra);
  std::size_t at = 0;
  for (const splice& s : splices) {
    append_spliced(out, doc.substr(at, s.list.begin - at));
    append_merged(out, *s.prefill, list_elements(doc, s.list));
    at = s.list.end;
  }
  append_spliced(out, doc.substr(at));
  return out;
}

// The event's `index` member (absent = 0), or nullopt if it is not a small non-negative integer.
std::optional<std::size_t> event_index(std::string_view doc, const std::vector<json_member>& members) {
  const json_member* idx = find_member(members, "index");
  if (!idx) return 0;
  if (idx->type != json_type::number) return std::nullopt;
  const char* b = doc.data() + idx->value_begin;
  const char* e = doc.data() + idx->value_end;
  std::size_t v = 0;
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc{} || p != e || v >= max_stream_index) return std::nullopt;
  return v;
}

}  // namespace

bool extract_input_logprobs(std::string_view prefill_json, prefill_logprobs& out) {
  out.items.clear();
  std::vector<json_member> members, scratch;
  json_type root;
  if (!scan_json(prefill_json, &members, nullptr, &root)) return false;
  auto take = [&](std::optional<span> list) {
    if (list) {
      out.items.emplace_back(copy_of(list_elements(prefill_json, *list)));
    } else {
      out.items.emplace_back(std::nullopt);
    }
  };
  if (root == json_type::object) {
    take(find_list(prefill_json, members, scratch));
    return true;
  }
  if (root != json_type::array) return false;
  const std::string_view trimmed = trim_json_whitespace(prefill_json);
  const std::size_t begin = static_cast<std::size_t>(trimmed.data() - prefill_json.data());
  std::vector<json_value_span> elements;
  if (!array_elements(prefill_json, begin, begin + trimmed.size(), elements)) return false;
  for (const json_value_span& el : elements) {
    if (el.type == json_type::object) {
      take(find_list_in_object(prefill_json, span{el.begin, el.end}, members, scratch));
    } else {
      take(std::nullopt);
    }
  }
  return true;
}

std::optional<std::string> merge_input_logprobs(std::string_view decode_json, const prefill_logprobs& prefill) {
  std::vector<json_member> members, scratch;
  json_type root;
  if (!scan_json(decode_json, &members, nullptr, &root)) return std::nullopt;
  std::vector<splice> splices;
  auto consider = [&](std::size_t item, std::optional<span> list) {
    if (list && item < prefill.items.size() && prefill.items[item]) splices.push_back({*list, &*prefill.items[item]});
  };
  if (root == json_type::object) {
    consider(0, find_list(decode_json, members, scratch));
  } else if (root == json_type::array) {
    const std::string_view trimmed = trim_json_whitespace(decode_json);
    const std::size_t begin = static_cast<std::size_t>(trimmed.data() - decode_json.data());
    std::vector<json_value_span> elements;
    if (!array_elements(decode_json, begin, begin + trimmed.size(), elements)) return std::nullopt;
    for (std::size_t i = 0; i < elements.size(); ++i) {
      if (elements[i].type != json_type::object) continue;
      consider(i, find_list_in_object(decode_json, span{elements[i].begin, elements[i].end}, members, scratch));
    }
  }
  if (splices.empty()) return std::string(decode_json);
  return apply_splices(decode_json, splices);
}

void collect_stream_logprobs(std::string_view event_payload, prefill_logprobs& out) {
  std::vector<json_member> members, scratch;
  json_type root;
  if (!scan_json(event_payload, &members, nullptr, &root) || root != json_type::object) return;
  const auto index = event_index(event_payload, members);
  if (!index) return;
  if (*index < out.items.size() && out.items[*index]) return;  // only the first list per index counts
  const auto list = find_list(event_payload, members, scratch);
  if (!list) return;
  if (out.items.size() <= *index) out.items.resize(*index + 1);
  out.items[*index] = copy_of(list_elements(event_payload, *list));
}

std::optional<std::string> merge_event_logprobs(std::string_view decode_payload, const prefill_logprobs& prefill) {
  std::vector<json_member> members, scratch;
  json_type root;
  if (!scan_json(decode_payload, &members, nullptr, &root) || root != json_type::object) return std::nullopt;
  const auto index = event_index(decode_payload, members);
  if (!index || *index >= prefill.items.size() || !prefill.items[*index]) return std::nullopt;
  const auto list = find_list(decode_payload, members, scratch);
  if (!list) return std::nullopt;
  return apply_splices(decode_payload, {splice{*list, &*prefill.items[*index]}});
}

}  // namespace pdlb
