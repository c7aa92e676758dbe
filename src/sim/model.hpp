// The simulated model: a deterministic "tokenizer" and "sampler".
//
// Nothing here is random: the output tokens, their text and their logprobs are pure functions of
// the input token ids, so two load balancers in front of equal simulators can be compared byte for
// byte (ids and latencies aside). Pure functions, no sockets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pdlb::sim {

/// Size of the simulated vocabulary.
inline constexpr std::uint32_t vocab_size = 32000;

/// Token ids of a text prompt: one token per `chars_per_token` bytes (the last one may be
/// shorter), each id a hash of its bytes. An empty text gives one token, as a BOS would.
std::vector<std::int32_t> tokenize(std::string_view text, unsigned chars_per_token);

/// A seed that identifies a prompt (a hash of all its token ids).
std::uint64_t prompt_seed(const std::vector<std::int32_t>& ids);

/// The i-th output token for a prompt.
std::int32_t output_token(std::uint64_t seed, std::size_t i);

/// The text of a token: a short word with a leading space, plain ASCII letters (no JSON escaping
/// is needed, and output text is copied into JSON as it is).
std::string_view token_text(std::int32_t id);

/// Logprob of the i-th output token, rounded to 4 decimals so its printed form is stable.
double output_logprob(std::uint64_t seed, std::size_t i);

/// Logprob of input token `pos` (pos >= 1; SGLang reports null for position 0).
double input_logprob(std::int32_t id, std::size_t pos);

/// Appends a logprob as JSON with a fixed format ("-1.2345").
void append_logprob(std::string& out, double v);

}  // namespace pdlb::sim
