// What pdlb-bench needs to know about one response or stream event, found by scanning the JSON text.
//
// The benchmark must not spend its CPU (which it shares with the contenders) parsing every event into
// a JSON tree, so it looks only for the few fields it validates. These functions are pure, so they can
// be unit-tested without sockets.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace pdlb::bench {

/// The API a request goes to.
enum class route_kind { generate, completions, chat };

/// The request path of a route.
std::string_view route_path(route_kind kind);

/// What one stream event (its `data:` payload) or one whole non-stream body says.
struct event_info {
  bool done = false;   ///< The "[DONE]" sentinel.
  bool token = false;  ///< Carries generated text (counts for TTFT and ITL).
  bool error = false;  ///< An error object instead of a result.
  /// completion_tokens (generate: meta_info; OpenAI: usage), if present.
  std::optional<std::uint64_t> completion_tokens;
  /// meta_info.e2e_latency in seconds (the worker's age of the request when it made this event).
  std::optional<double> e2e_latency;
  /// sim_write_ns (pdlb-sim --stamp-events): the worker's steady_clock time in ns when it wrote
  /// this event (meta_info.sim_write_ns on /generate, top level on OpenAI chunks).
  std::optional<std::int64_t> write_ns;
  /// Number of entries of meta_info.input_token_logprobs, if counted and present.
  std::optional<std::uint64_t> input_logprobs;
};

/// Inspects one event payload or whole body. `count_logprobs` also counts input_token_logprobs
/// entries (a linear scan of the list).
event_info inspect_event(std::string_view data, route_kind kind, bool count_logprobs);

/// The unsigned integer after `"key":` (first occurrence at or after `from`), if any.
std::optional<std::uint64_t> find_uint(std::string_view json, std::string_view key,
                                       std::size_t from = 0);
/// The number after `"key":`, if any.
std::optional<double> find_double(std::string_view json, std::string_view key);

/// Number of elements of the JSON array starting at json[open] == '['; nullopt if unterminated.
std::optional<std::uint64_t> count_array_elements(std::string_view json, std::size_t open);

}  // namespace pdlb::bench
