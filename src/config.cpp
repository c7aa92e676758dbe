#include "pdlb/config.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cerrno>
#include <thread>

namespace pdlb {

namespace {

bool parse_port(std::string_view s, std::uint16_t& out) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > 65535) return false;
  out = static_cast<std::uint16_t>(v);
  return true;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::chrono::milliseconds seconds_to_ms(double s) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(s * 1000.0)));
}

}  // namespace

bool parse_worker_url(std::string_view text, worker_url& out, std::string& error) {
  out = worker_url{};
  std::string_view rest = text;
  auto scheme_end = rest.find("://");
  if (scheme_end == std::string_view::npos) {
    error = "worker URL '" + std::string(text) + "' has no scheme (expected http://host:port)";
    return false;
  }
  std::string scheme = lower(rest.substr(0, scheme_end));
  if (scheme != "http") {
    error = "worker URL '" + std::string(text) + "': only http:// is supported";
    return false;
  }
  rest.remove_prefix(scheme_end + 3);
  auto path_start = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, path_start);
  std::string_view path = path_start == std::string_view::npos ? std::string_view{} : rest.substr(path_start);
  if (authority.find('@') != std::string_view::npos) {
    error = "worker URL '" + std::string(text) + "': user info is not supported";
    return false;
  }
  if (path.find_first_of("?#") != std::string_view::npos) {
    error = "worker URL '" + std::string(text) + "': a query or fragment is not supported";
    return false;
  }
  std::string_view host_part;
  std::string_view port_part;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) {
      error = "worker URL '" + std::string(text) + "': unterminated IPv6 literal";
      return false;
    }
    host_part = authority.substr(0, close + 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        error = "worker URL '" + std::string(text) + "': junk after IPv6 literal";
        return false;
      }
      port_part = after.substr(1);
    }
    out.host = std::string(host_part.substr(1, host_part.size() - 2));
    if (out.host.empty()) {
      error = "worker URL '" + std::string(text) + "': empty host";
      return false;
    }
  } else {
    auto colon = authority.rfind(':');
    if (colon != std::string_view::npos) {
      host_part = authority.substr(0, colon);
      port_part = authority.substr(colon + 1);
      if (host_part.find(':') != std::string_view::npos) {
        error = "worker URL '" + std::string(text) + "': IPv6 hosts must be in brackets";
        return false;
      }
    } else {
      host_part = authority;
    }
    out.host = lower(host_part);
  }
  if (out.host.empty()) {
    error = "worker URL '" + std::string(text) + "': empty host";
    return false;
  }
  out.port = 80;
  if (!port_part.empty() || authority.find(':', host_part.size()) != std::string_view::npos) {
    if (!parse_port(port_part, out.port) || out.port == 0) {
      error = "worker URL '" + std::string(text) + "': bad port '" + std::string(port_part) + "'";
      return false;
    }
  }
  out.host_header = std::string(authority);
  // urllib's hostname is lower-cased; the brackets stay on IPv6 literals as current SGLang expects.
  out.bootstrap_host = host_part.front() == '[' ? "[" + lower(out.host) + "]" : out.host;
  std::string prefix(path);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  out.path_prefix = prefix;
  out.url = scheme + "://" + std::string(authority) + prefix;
  return true;
}

std::string_view to_string(policy_kind p) {
  switch (p) {
    case policy_kind::random: return "random";
    case policy_kind::po2: return "po2";
    case policy_kind::round_robin: return "round_robin";
  }
  return "?";
}

cli_result parse_command_line(int argc, const char* const* argv) {
  cli_result result;
  config& cfg = result.cfg;
  CLI::App app{"pdlb: a load balancer for SGLang prefill/decode disaggregation (drop-in for minilb)",
               "pdlb"};
  app.set_version_flag("--version", std::string("pdlb ") + PDLB_VERSION);
  app.get_formatter()->column_width(42);

  std::string policy = "random";
  std::vector<std::string> prefill_args;
  std::vector<std::string> decode_args;
  std::vector<int> bootstrap_ports;
  double timeout_s = 600;
  double connect_timeout_s = 10;
  double header_timeout_s = 60;
  double body_timeout_s = 60;
  double idle_timeout_s = 4;
  double grace_s = 30;

  app.add_flag("--rust-lb", cfg.rust_lb, "Accepted for compatibility with minilb; has no effect");
  app.add_option("--host", cfg.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", cfg.port, "Port to listen on (0 picks a free one)")->capture_default_str();
  app.add_option("--policy", policy, "How to pick a prefill/decode pair")
      ->check(CLI::IsMember({"random", "po2", "round_robin"}))
      ->capture_default_str();
  app.add_option("--prefill", prefill_args,
                 "Prefill worker URLs; each may be followed by its bootstrap port or 'none' "
                 "(SGLang router form)")
      ->expected(1, -1);
  app.add_option("--decode", decode_args, "Decode worker URLs")->expected(1, -1);
  app.add_option("--prefill-bootstrap-ports", bootstrap_ports,
                 "Bootstrap ports: one for all prefill workers, or one per prefill worker")
      ->expected(1, -1);
  app.add_option("--log-interval", cfg.log_interval, "Seconds between status log lines (0: off)")
      ->capture_default_str();
  app.add_option("--timeout", timeout_s,
                 "Seconds to wait for a worker's answer, or between two events of a stream")
      ->capture_default_str();
  app.add_option("--connector-limit", cfg.connector_limit,
                 "Most upstream connections, all workers together")
      ->capture_default_str();
  app.add_option("--connector-limit-per-host", cfg.connector_limit_per_host,
                 "Most upstream connections to one worker")
      ->capture_default_str();
  app.add_option("--threads", cfg.threads, "Worker threads (default: one per core)");
  app.add_option("--max-body-size", cfg.max_body_size, "Largest request body in bytes (413 above)")
      ->capture_default_str();
  app.add_option("--connect-timeout", connect_timeout_s, "Seconds to connect to a worker")
      ->capture_default_str();
  app.add_option("--client-header-timeout", header_timeout_s,
                 "Seconds a client may take to send request headers (idle keep-alive included)")
      ->capture_default_str();
  app.add_option("--client-body-timeout", body_timeout_s,
                 "Seconds of silence allowed while a client sends a request body")
      ->capture_default_str();
  app.add_option("--upstream-idle-timeout", idle_timeout_s,
                 "Seconds an idle pooled worker connection is kept")
      ->capture_default_str();
  app.add_option("--shutdown-grace", grace_s,
                 "Seconds in-flight requests get to finish after SIGTERM/SIGINT")
      ->capture_default_str();
  app.add_option("--access-log", cfg.access_log,
                 "One JSON line per request to this file ('-': stdout); off by default");
  app.add_option("--log-level", cfg.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--api-key", cfg.api_key,
                 "Require 'Authorization: Bearer KEY' on inference routes (also env PDLB_API_KEY)")
      ->envname("PDLB_API_KEY");
  app.add_option("--admin-api-key", cfg.admin_api_key,
                 "Require 'Authorization: Bearer KEY' on admin routes (also env PDLB_ADMIN_API_KEY)")
      ->envname("PDLB_ADMIN_API_KEY");
  double fail_timeout_s = 10;
  app.add_option("--max-fails", cfg.max_fails,
                 "Failures in a row that eject a worker (a refused connection ejects at once; 0: never)")
      ->capture_default_str();
  app.add_option("--fail-timeout", fail_timeout_s,
                 "Seconds a worker stays ejected the first time (doubled for each ejection in a row, up to 300)")
      ->capture_default_str();
  app.add_option("--max-retries", cfg.max_retries,
                 "Extra attempts on another worker pair when an attempt failed before the client got a byte")
      ->capture_default_str();

  // As argparse does, a scalar option given twice takes its last value.
  for (CLI::Option* opt : app.get_options()) {
    if (opt->get_items_expected_max() == 1 && opt->get_type_size() == 1)
      opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    result.what = cli_result::action::exit;
    result.exit_code = e.get_exit_code();
    if (e.get_name() == "CallForHelp" || e.get_name() == "CallForAllHelp") {
      result.message = app.help();
      result.exit_code = 0;
    } else if (e.get_name() == "CallForVersion") {
      result.message = e.what();
      result.message += "\n";
      result.exit_code = 0;
    } else {
      result.message = std::string("pdlb: ") + e.what() + "\nRun with --help for usage.\n";
      result.exit_code = 2;
    }
    return result;
  }

  auto fail = [&](const std::string& msg) {
    result.what = cli_result::action::exit;
    result.exit_code = 2;
    result.message = "pdlb: " + msg + "\n";
    return result;
  };

  cfg.policy = policy == "po2" ? policy_kind::po2
               : policy == "round_robin" ? policy_kind::round_robin
                                         : policy_kind::random;

  // --prefill URL [PORT|none] ...: a value that is a port or "none" belongs to the URL before it.
  bool router_form_ports = false;
  for (const auto& arg : prefill_args) {
    std::uint16_t port = 0;
    bool is_none = lower(arg) == "none";
    if (is_none || parse_port(arg, port)) {
      if (cfg.prefill.empty()) return fail("--prefill: '" + arg + "' must follow a worker URL");
      auto& last = cfg.prefill.back();
      if (last.bootstrap_port || last.url.url.empty())
        return fail("--prefill: two bootstrap ports after one URL ('" + arg + "')");
      if (!is_none) {
        if (port == 0) return fail("--prefill: bootstrap port 0 is not valid");
        last.bootstrap_port = port;
      }
      router_form_ports = true;
      continue;
    }
    prefill_config pc;
    std::string error;
    if (!parse_worker_url(arg, pc.url, error)) return fail("--prefill: " + error);
    cfg.prefill.push_back(std::move(pc));
  }
  for (const auto& arg : decode_args) {
    worker_url u;
    std::string error;
    if (!parse_worker_url(arg, u, error)) return fail("--decode: " + error);
    cfg.decode.push_back(std::move(u));
  }
  if (!bootstrap_ports.empty()) {
    if (router_form_ports)
      return fail("give bootstrap ports either after each --prefill URL or with "
                  "--prefill-bootstrap-ports, not both");
    for (int p : bootstrap_ports)
      if (p <= 0 || p > 65535)
        return fail("--prefill-bootstrap-ports: " + std::to_string(p) + " is not a valid port");
    if (bootstrap_ports.size() == 1) {
      for (auto& pc : cfg.prefill) pc.bootstrap_port = static_cast<std::uint16_t>(bootstrap_ports[0]);
    } else if (bootstrap_ports.size() != cfg.prefill.size()) {
      return fail("Number of prefill URLs must match number of bootstrap ports (" +
                  std::to_string(cfg.prefill.size()) + " URLs, " +
                  std::to_string(bootstrap_ports.size()) + " ports)");
    } else {
      for (std::size_t i = 0; i < bootstrap_ports.size(); ++i)
        cfg.prefill[i].bootstrap_port = static_cast<std::uint16_t>(bootstrap_ports[i]);
    }
  }

  auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  if (!positive(timeout_s)) return fail("--timeout must be a positive number of seconds");
  if (!positive(connect_timeout_s)) return fail("--connect-timeout must be positive");
  if (!positive(header_timeout_s)) return fail("--client-header-timeout must be positive");
  if (!positive(body_timeout_s)) return fail("--client-body-timeout must be positive");
  if (!positive(idle_timeout_s)) return fail("--upstream-idle-timeout must be positive");
  if (!std::isfinite(grace_s) || grace_s < 0) return fail("--shutdown-grace must be >= 0");
  if (!positive(fail_timeout_s)) return fail("--fail-timeout must be positive");
  cfg.fail_timeout = seconds_to_ms(fail_timeout_s);
  if (cfg.log_interval < 0) return fail("--log-interval must be >= 0");
  if (cfg.connector_limit == 0 || cfg.connector_limit_per_host == 0)
    return fail("connector limits must be at least 1");
  if (cfg.max_body_size == 0) return fail("--max-body-size must be at least 1");
  cfg.timeout = seconds_to_ms(timeout_s);
  cfg.connect_timeout = seconds_to_ms(connect_timeout_s);
  cfg.client_header_timeout = seconds_to_ms(header_timeout_s);
  cfg.client_body_timeout = seconds_to_ms(body_timeout_s);
  cfg.upstream_idle_timeout = seconds_to_ms(idle_timeout_s);
  cfg.shutdown_grace = seconds_to_ms(grace_s);
  if (cfg.threads == 0) cfg.threads = std::max(1u, std::thread::hardware_concurrency());
  if (!cfg.access_log.empty() && cfg.access_log != "-") {
    // Fail at start-up, with the reason, rather than when the first request is logged.
    std::FILE* f = std::fopen(cfg.access_log.c_str(), "a");
    if (!f) return fail("--access-log: cannot open " + cfg.access_log + " for appending: " + std::strerror(errno));
    std::fclose(f);
  }
  return result;
}

}  // namespace pdlb
