// Inspecting a client request body and injecting the PD bootstrap fields, without re-serialising it.
//
// minilb parses the body into a dict, updates bootstrap_host/port/room and dumps it again. pdlb gets
// the same result by validating the bytes once (json_scan) and splicing: every member the client sent
// stays byte-for-byte, client-supplied bootstrap_* members are dropped, and the three fields are
// appended before the closing brace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pdlb/json_scan.hpp"

namespace pdlb {

/// Which API a request came in on; only /generate has batches.
enum class route_kind { generate, openai };

/// What the proxy needs to know about a valid request body.
struct request_info {
  /// `stream` is true (absent or null means false).
  bool stream = false;
  /// `return_logprob` is true (absent or null means false).
  bool return_logprob = false;
  /// Number of prompts of a /generate batch (minilb's `_get_request_batch_size`); nullopt when single.
  std::optional<std::size_t> batch_size;
  /// The body's top-level members, for rewrite_request.
  std::vector<json_member> members;
};

/// The outcome of inspect_request.
struct inspect_result {
  /// True when the body is acceptable.
  bool ok = false;
  /// Why it is not (the text of a 400 response).
  std::string error;
  /// Valid when ok.
  request_info info;
};

/// Validates `body` (a JSON object) and reads stream, return_logprob and the batch size.
inspect_result inspect_request(std::string_view body, route_kind kind);

/// Like inspect_request, reusing `info.members`' storage; returns false with `error` set on failure.
bool inspect_request(std::string_view body, route_kind kind, request_info& info, std::string& error);

/// Where the decode worker finds the prefill worker's KV bootstrap server.
struct bootstrap_fields {
  /// The host as it goes into JSON, e.g. "10.0.0.1" or "[::1]" (minilb uses urlparse().hostname).
  std::string host;
  /// The prefill worker's bootstrap port; nullopt is written as null.
  std::optional<std::uint16_t> port;
};

/// The rewritten body: every member of `body` kept byte-for-byte except top-level bootstrap_host,
/// bootstrap_port and bootstrap_room, which are removed; then the three fields appended before the
/// final '}' (as lists of `*info.batch_size` elements for a batch). `rooms` holds one room per prompt
/// (rooms.size() == batch_size, or 1 when single); rooms should be in [0, 2^63-1] like minilb's.
std::string rewrite_request(std::string_view body, const request_info& info, const bootstrap_fields& boot,
                            std::span<const std::uint64_t> rooms);

/// Same, appending to `out` (whose storage can be reused between requests).
void rewrite_request(std::string_view body, const request_info& info, const bootstrap_fields& boot,
                     std::span<const std::uint64_t> rooms, std::string& out);

}  // namespace pdlb
