// Writing JSON strings by hand on the hot path, without a JSON library.
#pragma once

#include <string>
#include <string_view>

namespace pdlb {

/// Appends `s` to `out` as a quoted JSON string. Bytes >= 0x80 are copied as they are (the caller
/// guarantees UTF-8); quotes, backslashes and control characters are escaped.
void append_json_string(std::string& out, std::string_view s);

/// `s` as a quoted JSON string.
std::string json_string(std::string_view s);

}  // namespace pdlb
