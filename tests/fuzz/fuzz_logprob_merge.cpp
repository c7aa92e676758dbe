// Logprob merging: output is valid JSON and, where nlohmann can build the expected result the way
// minilb does (list concatenation), equal to it.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "pdlb/json_scan.hpp"
#include "pdlb/logprob_merge.hpp"

namespace {

void fail(const char* what, std::string_view a, std::string_view b) {
  std::fprintf(stderr, "fuzz_logprob_merge: %s\nprefill: %.*s\ndecode: %.*s\n", what, static_cast<int>(a.size()),
               a.data(), static_cast<int>(b.size()), b.data());
  std::abort();
}

std::optional<nlohmann::json> parse(std::string_view s) {
  try {
    return nlohmann::json::parse(s);
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

const nlohmann::json* list_of(const nlohmann::json& item) {
  if (!item.is_object()) return nullptr;
  auto meta = item.find("meta_info");
  if (meta == item.end() || !meta->is_object()) return nullptr;
  auto list = meta->find("input_token_logprobs");
  if (list == meta->end() || !list->is_array()) return nullptr;
  return &*list;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider fdp(data, size);
  const std::string prefill = fdp.ConsumeRandomLengthString(size);
  const std::string decode = fdp.ConsumeRemainingBytesAsString();

  pdlb::prefill_logprobs p;
  const bool extracted = pdlb::extract_input_logprobs(prefill, p);
  const auto merged = pdlb::merge_input_logprobs(decode, p);
  const bool decode_valid = pdlb::scan_json(decode, nullptr, nullptr);
  if (merged.has_value() != decode_valid) fail("merge verdict differs from validity", prefill, decode);
  if (merged && !pdlb::scan_json(*merged, nullptr, nullptr)) fail("merged body is not valid JSON", prefill, decode);

  // Streams: collect from the prefill payload, merge into the decode payload.
  pdlb::prefill_logprobs sp;
  pdlb::collect_stream_logprobs(prefill, sp);
  const auto event = pdlb::merge_event_logprobs(decode, sp);
  if (event && !pdlb::scan_json(*event, nullptr, nullptr)) fail("merged event is not valid JSON", prefill, decode);

  // The non-stream single-object case against minilb's semantics, rebuilt with nlohmann.
  if (!extracted || !merged) return 0;
  const auto pj = parse(prefill), dj = parse(decode), mj = parse(*merged);
  if (!pj || !dj) return 0;
  if (!mj) fail("nlohmann cannot parse the merged body", prefill, decode);
  if (!pj->is_object() || !dj->is_object()) return 0;
  nlohmann::json expected = *dj;
  const nlohmann::json* pl = list_of(*pj);
  const nlohmann::json* dl = list_of(*dj);
  if (pl && dl) {
    nlohmann::json joined = *pl;
    for (const auto& e : *dl) joined.push_back(e);
    expected["meta_info"]["input_token_logprobs"] = joined;
  }
  if (*mj != expected) fail("merged body differs from list concatenation", prefill, decode);
  return 0;
}
