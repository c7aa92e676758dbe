// Configuration: minilb's flags (launch_lb.py), the SGLang router's `--prefill URL [BOOTSTRAP_PORT|none]`
// form, pdlb's own production options, and the same options from a TOML file (`--config FILE`).
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

/// Where po2 takes a worker's load from (--load-source).
enum class load_source { local, worker };

/// A DNS name whose A/AAAA records are workers (--prefill-dns / --decode-dns NAME:PORT[:BOOTSTRAP]).
struct dns_source {
  bool prefill = false;    ///< The records are prefill workers (else decode workers).
  std::string name;        ///< The name to resolve.
  std::uint16_t port = 0;  ///< Each record's worker is http://ADDRESS:port.
  std::optional<std::uint16_t> bootstrap_port;  ///< Prefill only; nullopt: sent as null.
};

/// Parses --prefill-dns / --decode-dns values. False with `error` set if `text` is not usable.
bool parse_dns_source(std::string_view text, bool prefill, dns_source& out, std::string& error);

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
  std::string log_format = "text";  ///< "text" (spdlog's pattern) or "json" (one object per line).
  std::string config_file;  ///< --config: the TOML file read at start and again on SIGHUP; "" if none.
  std::string api_key;        ///< Bearer key for inference routes; empty: off.
  std::string admin_api_key;  ///< Bearer key for admin routes; empty: off.
  unsigned max_fails = 3;     ///< Failures in a row that eject a worker; 0: no passive ejection.
  std::chrono::milliseconds fail_timeout{std::chrono::seconds(10)};  ///< First ejection's length.
  unsigned max_retries = 2;   ///< Extra attempts on another pair when nothing reached the client.
  std::chrono::milliseconds health_check_interval{0};  ///< Between active health checks; 0: off.
  std::string health_check_path = "/health";           ///< What an active health check GETs.
  std::chrono::milliseconds health_check_timeout{std::chrono::seconds(5)};  ///< Longest wait for a check.
  unsigned health_check_failures = 3;  ///< Failed checks in a row that eject a worker.
  unsigned health_check_passes = 2;    ///< Passing checks in a row that restore a worker they ejected.
  std::vector<dns_source> dns;         ///< Names resolved for workers (--prefill-dns, --decode-dns).
  std::chrono::milliseconds dns_interval{std::chrono::seconds(5)};  ///< Between two resolutions.
  std::string dns_server;  ///< "ADDRESS[:PORT]" to ask instead of the system's resolvers; "" for those.
  load_source load = load_source::local;  ///< What po2 compares.
  std::chrono::milliseconds load_poll_interval{std::chrono::seconds(1)};  ///< Between /get_load polls.
  std::string ready_file;     ///< Where to write {"host","port"} once listening; empty: off.
  /// A listener of its own for GET /metrics: -1 off (served on the main port only), 0 any free port.
  int metrics_port = -1;
  std::string access_log;     ///< Access log: a file path, "-" for stdout, empty: off.
};

/// Result of parsing the command line.
struct cli_result {
  enum class action { run, exit } what = action::run;
  int exit_code = 0;    ///< For action::exit.
  std::string message;  ///< Help, version or error text to print (stdout for 0, stderr otherwise).
  config cfg;
};

/// Parses argv and, with `--config FILE`, that TOML file (options by long name, `[[prefill]]` and
/// `[[decode]]` tables; the command line and the environment win over the file). Never throws; errors
/// come back as action::exit with exit_code 2 and a message (for the file: its name, line and key).
cli_result parse_command_line(int argc, const char* const* argv);
/// The same, for arguments kept as strings (argv[0] first), e.g. to parse again on a reload.
cli_result parse_command_line(const std::vector<std::string>& args);

std::string_view to_string(policy_kind p);
std::string_view to_string(load_source s);

}  // namespace pdlb
