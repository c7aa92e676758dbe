// inspect_request + rewrite_request: a rewritten body is valid JSON, keeps every original field, and
// inspects the same way again.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pdlb/rewrite.hpp"

namespace {

void fail(const char* what, std::string_view in, std::string_view out = {}) {
  std::fprintf(stderr, "fuzz_rewrite: %s\n%.*s\n---\n%.*s\n", what, static_cast<int>(in.size()), in.data(),
               static_cast<int>(out.size()), out.data());
  std::abort();
}

std::optional<nlohmann::json> parse(std::string_view s) {
  try {
    return nlohmann::json::parse(s);
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto kind = (data[0] & 1) ? pdlb::route_kind::openai : pdlb::route_kind::generate;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto r = pdlb::inspect_request(body, kind);
  if (!r.ok) {
    if (r.error.empty()) fail("rejected without a message", body);
    return 0;
  }
  const std::size_t n = r.info.batch_size.value_or(1);
  std::vector<std::uint64_t> rooms(n);
  for (std::size_t i = 0; i < n; ++i) rooms[i] = (std::uint64_t{1} << 63) - 1 - i;
  const pdlb::bootstrap_fields boot{(data[0] & 2) ? "[::1]" : "10.0.0.1",
                                    (data[0] & 4) ? std::nullopt : std::optional<std::uint16_t>(8998)};
  const std::string out = pdlb::rewrite_request(body, r.info, boot, rooms);

  const auto again = pdlb::inspect_request(out, kind);
  if (!again.ok) fail("rewritten body does not inspect", body, out);
  if (again.info.stream != r.info.stream || again.info.return_logprob != r.info.return_logprob ||
      again.info.batch_size != r.info.batch_size) {
    fail("rewritten body inspects differently", body, out);
  }

  const auto in_json = parse(body);
  if (!in_json) return 0;  // e.g. unpaired surrogate escapes, which nlohmann refuses
  const auto out_json = parse(out);
  if (!out_json) fail("nlohmann cannot parse the rewritten body", body, out);
  for (const auto& [k, v] : in_json->items()) {
    if (k == "bootstrap_host" || k == "bootstrap_port" || k == "bootstrap_room") continue;
    if (!out_json->contains(k) || (*out_json)[k] != v) fail("a field changed", body, out);
  }
  const auto& room = (*out_json)["bootstrap_room"];
  if (r.info.batch_size ? !(room.is_array() && room.size() == n) : !room.is_number_unsigned()) {
    fail("bootstrap_room has the wrong shape", body, out);
  }
  return 0;
}
