// Readiness without log scraping: once a process listens, it writes a small JSON file
// ({"host": ..., "port": N}, pdlb-sim adds "bootstrap_port") that tests, benches and scripts read
// instead of matching log lines. The file appears whole or not at all (written beside, renamed).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pdlb {

/// What a ready file says.
struct ready_info {
  std::string host;                             ///< The address the process was told to bind.
  std::uint16_t port = 0;                       ///< The bound HTTP port.
  std::optional<std::uint16_t> bootstrap_port;  ///< pdlb-sim prefill: the bound bootstrap port.
  std::optional<std::uint16_t> metrics_port;    ///< pdlb with --metrics-port: its bound port.
};

/// Writes `info` to `path` atomically: a temporary file in the same directory, then rename(), so a
/// reader never sees a partial file. Throws std::system_error if it cannot.
void write_ready_file(const std::string& path, const ready_info& info);

/// Reads a ready file; nullopt if it does not exist or is not a complete ready file.
std::optional<ready_info> read_ready_file(const std::string& path);

}  // namespace pdlb
