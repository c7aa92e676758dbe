// Merging the prefill worker's input-token logprobs into the decode worker's response.
//
// With return_logprob the prefill worker computes the prompt's logprobs and the decode worker only
// its own, so (like minilb) the client gets meta_info.input_token_logprobs = prefill's list followed
// by decode's. Lists are moved as raw JSON text; nothing is parsed into numbers or re-serialised.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pdlb {

/// The prefill's meta_info.input_token_logprobs per batch item (a non-batch response has one item):
/// the raw JSON text of the list's elements without the brackets (trimmed; empty for `[]`), or
/// nullopt when that item has no such list.
struct prefill_logprobs {
  /// Indexed by batch item (non-stream) or by the events' `index` (stream).
  std::vector<std::optional<std::string>> items;
};

/// Reads the lists from a non-stream prefill response (an object, or an array of objects for a batch).
/// Returns false if the response is not valid JSON or neither an object nor an array.
bool extract_input_logprobs(std::string_view prefill_json, prefill_logprobs& out);

/// The decode response (an object, or an array of objects for a batch) with each item's
/// meta_info.input_token_logprobs replaced by prefill item i's elements followed by its own. Items
/// lacking the list on either side are left as they are. Returns nullopt if the decode body is not
/// valid JSON, in which case the caller passes it through unchanged.
std::optional<std::string> merge_input_logprobs(std::string_view decode_json, const prefill_logprobs& prefill);

/// Streams: records, per `index` (absent = 0), the list from the first prefill event that has one.
/// Payloads that are not JSON objects (such as "[DONE]") are ignored.
void collect_stream_logprobs(std::string_view event_payload, prefill_logprobs& out);

/// Streams: the decode event payload with the prefill list for its `index` (absent = 0) merged in
/// front of its own. Returns nullopt when there is nothing to change (not a JSON object, no list on
/// either side), so the relay can forward the original event bytes.
std::optional<std::string> merge_event_logprobs(std::string_view decode_payload, const prefill_logprobs& prefill);

}  // namespace pdlb
