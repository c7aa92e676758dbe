// Log set-up for pdlb's executables: spdlog on stderr, as text (colours only on a terminal) or as
// one JSON object per line for journald and log shippers.
#pragma once

#include <string_view>

namespace pdlb {

/// Makes a stderr logger named `name` the default one, in `format` ("text" or "json") at `level`
/// (spdlog's names: trace ... off). Text gets colour codes only when stderr is a terminal and
/// NO_COLOR is not set. Call once at start-up, before other threads log.
void setup_logging(std::string_view name, std::string_view format, std::string_view level);

/// Switches the default logger to `format` ("text" or "json"); safe while other threads log.
void set_log_format(std::string_view format);

}  // namespace pdlb
