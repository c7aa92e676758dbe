// Command-line configuration: minilb's flags (launch_lb.py), the SGLang router's
// `--prefill URL [BOOTSTRAP_PORT|none]` form, and pdlb's own production options.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pdlb {

/// A worker URL, split for connecting and for building request targets.
struct worker_url {
  std::string url;          ///< Normalised: scheme://host[:port][/prefix], no trailing slash.
  std::string host;         ///< Host to connect to; IPv6 literals without brackets.
  std::string host_header;  ///< Value of the Host header: host as written, with ":port" if given.
  std::string bootstrap_host;  ///< Host for bootstrap_host: IPv6 literals keep their brackets.
  std::uint16_t port = 80;
  std::string path_prefix;  ///< "" or "/some/prefix", prepended to every request path.
};

/// Parses "http://host[:port][/prefix]". Returns false with `error` set if the URL is not usable.
bool parse_worker_url(std::string_view text, worker_url& out, std::string& error);

enum class policy_kind { random, po2, round_robin };

struct prefill_config {
  worker_url url;
  std::optional<std::uint16_t> bootstrap_port;  ///< nullopt: bootstrap_port is sent as null.
};

struct config {
  std::string host = "0.0.0.0";
  std::uint16_t port = 8000;
  policy_kind policy = policy_kind::random;
  std::vector<prefill_config> prefill;
  std::vector<worker_url> decode;
  int log_interval = 5;             ///< Seconds between status lines; 0 disables them.
  std::chrono::milliseconds timeout{std::chrono::seconds(600)};  ///< Longest wait for a worker's answer or between two events.
  std::size_t connector_limit = 10000;           ///< Upstream connections, all workers together.
  std::size_t connector_limit_per_host = 10000;  ///< Upstream connections to one worker.
  bool rust_lb = false;
  unsigned threads = 0;  ///< 0: one per core.
  std::uint64_t max_body_size = 512ull * 1024 * 1024;
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds client_header_timeout{std::chrono::seconds(60)};
  std::chrono::milliseconds client_body_timeout{std::chrono::seconds(60)};
  std::chrono::milliseconds upstream_idle_timeout{std::chrono::seconds(4)};
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(30)};
  std::string log_level = "info";
  std::string api_key;        ///< Bearer key for inference routes; empty: off.
  std::string admin_api_key;  ///< Bearer key for admin routes; empty: off.
  unsigned max_fails = 3;     ///< Failures in a row that eject a worker; 0: no passive ejection.
  std::chrono::milliseconds fail_timeout{std::chrono::seconds(10)};  ///< First ejection's length.
  unsigned max_retries = 2;   ///< Extra attempts on another pair when nothing reached the client.
  std::string access_log;     ///< Access log: a file path, "-" for stdout, empty: off.
};

/// Result of parsing the command line.
struct cli_result {
  enum class action { run, exit } what = action::run;
  int exit_code = 0;    ///< For action::exit.
  std::string message;  ///< Help, version or error text to print (stdout for 0, stderr otherwise).
  config cfg;
};

/// Parses argv. Never throws; errors come back as action::exit with exit_code 2 and a message.
cli_result parse_command_line(int argc, const char* const* argv);

std::string_view to_string(policy_kind p);

}  // namespace pdlb
