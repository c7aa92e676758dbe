// Differential fuzzing of the JSON scanner against nlohmann::json::accept, plus span invariants.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pdlb/json_scan.hpp"

namespace {

void fail(const char* what, std::string_view doc) {
  std::fprintf(stderr, "fuzz_json_scan: %s\n%.*s\n", what, static_cast<int>(doc.size()), doc.data());
  std::abort();
}

// Where the two parsers may rightly disagree: nlohmann rejects unpaired surrogate escapes (valid JSON
// text) and numbers a double cannot hold (valid JSON), and accepts a leading BOM, which we reject.
// nlohmann also stops at a NUL byte as if the input ended there.
bool nlohmann_may_differ(const std::string& doc) {
  if (doc.find("\\u") != std::string::npos || doc.find('\0') != std::string::npos) return true;
  if (doc.size() >= 3 && doc.compare(0, 3, "\xEF\xBB\xBF") == 0) return true;
  try {
    const auto parsed = nlohmann::json::parse(doc);
    (void)parsed;
  } catch (const nlohmann::json::out_of_range&) {
    return true;
  } catch (const nlohmann::json::exception&) {
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string doc(reinterpret_cast<const char*>(data), size);
  std::vector<pdlb::json_member> members;
  std::string error;
  pdlb::json_type root{};
  const bool ours = pdlb::scan_json(doc, &members, &error, &root);
  if (!ours && error.empty()) fail("rejected without a message", doc);
  const bool deep = !ours && error == "nesting deeper than 1000";
  if (ours && doc.find('\0') != std::string::npos) fail("accepted a raw NUL byte", doc);
  if (!deep && !nlohmann_may_differ(doc) && ours != nlohmann::json::accept(doc)) {
    fail(ours ? "accepted what nlohmann rejects" : "rejected what nlohmann accepts", doc);
  }
  if (!ours) return 0;

  // Members: ordered, inside the document, each key a string and each value valid on its own.
  std::size_t last_end = 0;
  for (const auto& m : members) {
    if (m.member_begin < last_end || m.value_begin < m.member_begin || m.value_end <= m.value_begin ||
        m.member_end != m.value_end || m.member_end > doc.size() || doc[m.member_begin] != '"') {
      fail("bad member span", doc);
    }
    last_end = m.member_end;
    if (!pdlb::decode_json_string(m.key_raw)) fail("key does not decode", doc);
    const std::string_view value = std::string_view(doc).substr(m.value_begin, m.value_end - m.value_begin);
    pdlb::json_type t{};
    if (!pdlb::scan_json(value, nullptr, nullptr, &t) || t != m.type) fail("member value does not rescan", doc);
    if (m.type == pdlb::json_type::array) {
      std::vector<pdlb::json_value_span> els;
      if (!pdlb::array_elements(doc, m.value_begin, m.value_end, els) || els.size() != m.shape.count) {
        fail("array element count differs from shape", doc);
      }
    }
  }
  if (!members.empty() && root != pdlb::json_type::object) fail("members for a non-object", doc);
  return 0;
}
