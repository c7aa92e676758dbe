#include "pdlb/config.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <map>
#include <optional>
#include <cstring>
#include <cstdio>
#include <cerrno>
#include <thread>
#include <type_traits>

#include <arpa/inet.h>

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

bool parse_dns_source(std::string_view text, bool prefill, dns_source& out, std::string& error) {
  const std::string flag = prefill ? "--prefill-dns" : "--decode-dns";
  const std::string shape = prefill ? "NAME:PORT[:BOOTSTRAP_PORT]" : "NAME:PORT";
  out = dns_source{};
  out.prefill = prefill;
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    auto colon = text.find(':', start);
    parts.push_back(text.substr(start, colon == std::string_view::npos ? colon : colon - start));
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  if (parts.size() < 2 || parts.size() > (prefill ? 3u : 2u) || parts[0].empty()) {
    error = flag + " '" + std::string(text) + "': expected " + shape;
    return false;
  }
  // A host name: letters, digits, '-', '_' (SRV-style labels) and dots; no scheme, no path.
  for (char c : parts[0])
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') {
      error = flag + " '" + std::string(text) + "': '" + std::string(parts[0]) + "' is not a DNS name";
      return false;
    }
  out.name = std::string(parts[0]);
  if (!parse_port(parts[1], out.port) || out.port == 0) {
    error = flag + " '" + std::string(text) + "': bad port '" + std::string(parts[1]) + "'";
    return false;
  }
  if (parts.size() == 3 && lower(parts[2]) != "none") {
    std::uint16_t bp = 0;
    if (!parse_port(parts[2], bp) || bp == 0) {
      error = flag + " '" + std::string(text) + "': bad bootstrap port '" + std::string(parts[2]) + "'";
      return false;
    }
    out.bootstrap_port = bp;
  }
  return true;
}

namespace {

// "ADDRESS[:PORT]" with an IP literal (IPv6 in brackets when a port follows).
bool valid_dns_server(std::string_view text) {
  std::string_view addr = text, port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) return false;
    addr = text.substr(1, close - 1);
    auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      port = rest.substr(1);
      if (port.empty()) return false;
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    addr = text.substr(0, text.find(':'));
    port = text.substr(text.find(':') + 1);
    if (port.empty()) return false;
  }
  std::uint16_t p = 0;
  if (!port.empty() && (!parse_port(port, p) || p == 0)) return false;
  unsigned char buf[16];
  const std::string a(addr);
  return ::inet_pton(AF_INET, a.c_str(), buf) == 1 || ::inet_pton(AF_INET6, a.c_str(), buf) == 1;
}

}  // namespace

std::string_view to_string(load_source s) { return s == load_source::worker ? "worker" : "local"; }

std::string_view to_string(policy_kind p) {
  switch (p) {
    case policy_kind::random: return "random";
    case policy_kind::po2: return "po2";
    case policy_kind::round_robin: return "round_robin";
  }
  return "?";
}

namespace {

// The options as given, before they are checked and converted: CLI11 fills these from the command
// line, then apply_config_file() fills what the command line left unset.
struct raw_options {
  config cfg;  // the fields that need no conversion are parsed straight into it
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
  double fail_timeout_s = 10;
  double hc_interval_s = 0;
  double hc_timeout_s = 5;
  double dns_interval_s = 5;
  double load_poll_s = 1;
  std::vector<std::string> prefill_dns;
  std::vector<std::string> decode_dns;
  std::string load = "local";
  // Workers from the file's [[prefill]] and [[decode]] tables (used when the command line has none).
  std::optional<std::vector<prefill_config>> file_prefill;
  std::optional<std::vector<worker_url>> file_decode;
  bool ports_from_file = false;  // prefill-bootstrap-ports came from the file, not the command line
  bool check_only = false;       // --check: validate, report, exit
};

// The TOML type a config-file key must have, derived from the variable its option fills, so that the
// file and the command line cannot drift apart.
enum class value_kind { boolean, integer, number, string, integer_list, string_list };

template <class T>
constexpr value_kind kind_of() {
  if constexpr (std::is_same_v<T, bool>) return value_kind::boolean;
  else if constexpr (std::is_integral_v<T>) return value_kind::integer;
  else if constexpr (std::is_floating_point_v<T>) return value_kind::number;
  else if constexpr (std::is_same_v<T, std::string>) return value_kind::string;
  else if constexpr (std::is_same_v<T, std::vector<int>>) return value_kind::integer_list;
  else return value_kind::string_list;
}

using kind_map = std::map<std::string, value_kind, std::less<>>;

template <class T>
CLI::Option* add(CLI::App& app, kind_map& kinds, const std::string& name, T& var, const std::string& help) {
  kinds[name.substr(2)] = kind_of<T>();
  return app.add_option(name, var, help);
}

void add_options(CLI::App& app, kind_map& kinds, raw_options& raw) {
  config& cfg = raw.cfg;
  kinds["rust-lb"] = value_kind::boolean;
  app.add_flag("--rust-lb", cfg.rust_lb, "Accepted for compatibility with minilb; has no effect");
  app.add_option("--config", cfg.config_file,
                 "TOML file with any of these options by long name, and [[prefill]]/[[decode]] "
                 "workers; re-read on SIGHUP; the command line wins");
  app.add_flag("--check", raw.check_only,
               "Check the command line and the --config file, then exit: 0 if valid, 2 if not");
  add(app, kinds, "--host", cfg.host, "Address to listen on")->capture_default_str();
  add(app, kinds, "--port", cfg.port, "Port to listen on (0 picks a free one)")->capture_default_str();
  add(app, kinds, "--policy", raw.policy, "How to pick a prefill/decode pair")
      ->check(CLI::IsMember({"random", "po2", "round_robin"}))
      ->capture_default_str();
  app.add_option("--prefill", raw.prefill_args,
                 "Prefill worker URLs; each may be followed by its bootstrap port or 'none' "
                 "(SGLang router form)")
      ->expected(1, -1);
  app.add_option("--decode", raw.decode_args, "Decode worker URLs")->expected(1, -1);
  add(app, kinds, "--prefill-bootstrap-ports", raw.bootstrap_ports,
      "Bootstrap ports: one for all prefill workers, or one per prefill worker")
      ->expected(1, -1);
  add(app, kinds, "--log-interval", cfg.log_interval, "Seconds between status log lines (0: off)")
      ->capture_default_str();
  add(app, kinds, "--timeout", raw.timeout_s,
      "Seconds to wait for a worker's answer, or between two events of a stream")
      ->capture_default_str();
  add(app, kinds, "--connector-limit", cfg.connector_limit, "Most upstream connections, all workers together")
      ->capture_default_str();
  add(app, kinds, "--connector-limit-per-host", cfg.connector_limit_per_host,
      "Most upstream connections to one worker")
      ->capture_default_str();
  add(app, kinds, "--threads", cfg.threads, "Worker threads (default: one per core)");
  add(app, kinds, "--max-body-size", cfg.max_body_size, "Largest request body in bytes (413 above)")
      ->capture_default_str();
  add(app, kinds, "--connect-timeout", raw.connect_timeout_s, "Seconds to connect to a worker")
      ->capture_default_str();
  add(app, kinds, "--client-header-timeout", raw.header_timeout_s,
      "Seconds a client may take to send request headers (idle keep-alive included)")
      ->capture_default_str();
  add(app, kinds, "--client-body-timeout", raw.body_timeout_s,
      "Seconds of silence allowed while a client sends a request body")
      ->capture_default_str();
  add(app, kinds, "--upstream-idle-timeout", raw.idle_timeout_s,
      "Seconds an idle pooled worker connection is kept")
      ->capture_default_str();
  add(app, kinds, "--shutdown-grace", raw.grace_s,
      "Seconds in-flight requests get to finish after SIGTERM/SIGINT")
      ->capture_default_str();
  add(app, kinds, "--access-log", cfg.access_log,
      "One JSON line per request to this file ('-': stdout); off by default");
  add(app, kinds, "--log-level", cfg.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  add(app, kinds, "--log-format", cfg.log_format,
      "text, or json (one JSON object per line, for journald and log shippers)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  add(app, kinds, "--metrics-port", cfg.metrics_port,
      "Also serve GET /metrics on this port, on a listener of its own (0: any free port, in the log and "
      "the ready file); off by default: /metrics is on the main port")
      ->capture_default_str();
  add(app, kinds, "--ready-file", cfg.ready_file,
      "Once listening, write {\"host\": ..., \"port\": N} to this file (atomically)");
  add(app, kinds, "--api-key", cfg.api_key,
      "Require 'Authorization: Bearer KEY' on inference routes (also env PDLB_API_KEY)")
      ->envname("PDLB_API_KEY");
  add(app, kinds, "--admin-api-key", cfg.admin_api_key,
      "Require 'Authorization: Bearer KEY' on admin routes (also env PDLB_ADMIN_API_KEY)")
      ->envname("PDLB_ADMIN_API_KEY");
  add(app, kinds, "--max-fails", cfg.max_fails,
      "Failures in a row that eject a worker (a refused connection ejects at once; 0: never)")
      ->capture_default_str();
  add(app, kinds, "--fail-timeout", raw.fail_timeout_s,
      "Seconds a worker stays ejected the first time (doubled for each ejection in a row, up to 300)")
      ->capture_default_str();
  add(app, kinds, "--max-retries", cfg.max_retries,
      "Extra attempts on another worker pair when an attempt failed before the client got a byte")
      ->capture_default_str();
  add(app, kinds, "--health-check-interval", raw.hc_interval_s,
      "Seconds between active health checks of every worker (0: no active checks)")
      ->capture_default_str();
  add(app, kinds, "--health-check-path", cfg.health_check_path, "Path an active health check GETs")
      ->capture_default_str();
  add(app, kinds, "--health-check-timeout", raw.hc_timeout_s, "Seconds a health check may take")
      ->capture_default_str();
  add(app, kinds, "--health-check-failures", cfg.health_check_failures,
      "Failed health checks in a row that eject a worker")
      ->capture_default_str();
  add(app, kinds, "--health-check-passes", cfg.health_check_passes,
      "Passing health checks in a row that restore a worker the checks ejected")
      ->capture_default_str();
  add(app, kinds, "--prefill-dns", raw.prefill_dns,
      "NAME:PORT[:BOOTSTRAP_PORT]: every A/AAAA record of NAME is a prefill worker (repeatable)");
  add(app, kinds, "--decode-dns", raw.decode_dns,
      "NAME:PORT: every A/AAAA record of NAME is a decode worker (repeatable)");
  add(app, kinds, "--dns-interval", raw.dns_interval_s, "Seconds between two resolutions of the --*-dns names")
      ->capture_default_str();
  add(app, kinds, "--dns-server", cfg.dns_server,
      "ADDRESS[:PORT] of the DNS server to ask (default: the system's resolvers)");
  add(app, kinds, "--load-source", raw.load,
      "What po2 compares: 'local' (requests in flight through this pdlb) or 'worker' (plus each "
      "worker's own /get_load)")
      ->check(CLI::IsMember({"local", "worker"}))
      ->capture_default_str();
  add(app, kinds, "--load-poll-interval", raw.load_poll_s,
      "Seconds between /get_load polls (--load-source worker)")
      ->capture_default_str();

  // As argparse does, a scalar option given twice takes its last value.
  for (CLI::Option* opt : app.get_options()) {
    if (opt->get_items_expected_max() == 1 && opt->get_type_size() == 1)
      opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  }
}

// Where in the config file a value was written, for error messages: "FILE:LINE: KEY: ".
std::string where(const std::string& file, const toml::node& node, std::string_view key) {
  return file + ":" + std::to_string(node.source().begin.line) + ": " + std::string(key) + ": ";
}

// The value as CLI11 strings if it has the kind the key needs; nullopt if not.
std::optional<std::vector<std::string>> as_strings(const toml::node& node, value_kind kind) {
  auto scalar = [](const toml::node& n, value_kind k) -> std::optional<std::string> {
    if (k == value_kind::boolean && n.is_boolean()) return *n.value<bool>() ? "true" : "false";
    if (k == value_kind::integer && n.is_integer()) return std::to_string(*n.value<std::int64_t>());
    if (k == value_kind::number && n.is_integer()) return std::to_string(*n.value<std::int64_t>());
    if (k == value_kind::number && n.is_floating_point()) return fmt::format("{}", *n.value<double>());
    if (k == value_kind::string && n.is_string()) return *n.value<std::string>();
    return std::nullopt;
  };
  if (kind != value_kind::integer_list && kind != value_kind::string_list) {
    auto s = scalar(node, kind);
    if (!s) return std::nullopt;
    return std::vector<std::string>{*s};
  }
  const auto* arr = node.as_array();
  if (!arr || arr->empty()) return std::nullopt;
  std::vector<std::string> out;
  for (const auto& el : *arr) {
    auto s = scalar(el, kind == value_kind::integer_list ? value_kind::integer : value_kind::string);
    if (!s) return std::nullopt;
    out.push_back(*s);
  }
  return out;
}

std::string_view kind_name(value_kind k) {
  switch (k) {
    case value_kind::boolean: return "true or false";
    case value_kind::integer: return "an integer";
    case value_kind::number: return "a number";
    case value_kind::string: return "a string";
    case value_kind::integer_list: return "a non-empty array of integers";
    case value_kind::string_list: return "a non-empty array of strings";
  }
  return "?";
}

// One [[prefill]] or [[decode]] table: `url` (required) and, for prefill, `bootstrap_port`.
std::optional<std::string> read_worker(const std::string& file, const std::string& key, const toml::node& node,
                                       bool prefill, prefill_config& out) {
  const auto* table = node.as_table();
  if (!table) return where(file, node, key) + "must be a table ([[" + std::string(prefill ? "prefill" : "decode") + "]])";
  for (const auto& [k, v] : *table) {
    const std::string name = key + "." + std::string(k.str());
    if (k == "url") {
      if (!v.is_string()) return where(file, v, name) + "must be a string";
      std::string error;
      if (!parse_worker_url(*v.value<std::string>(), out.url, error)) return where(file, v, name) + error;
    } else if (k == "bootstrap_port" && prefill) {
      auto port = v.value<std::int64_t>();
      if (v.is_string() && lower(*v.value<std::string>()) == "none") continue;
      if (!v.is_integer() || *port <= 0 || *port > 65535)
        return where(file, v, name) + "must be a port (1-65535) or \"none\"";
      out.bootstrap_port = static_cast<std::uint16_t>(*port);
    } else {
      return where(file, v, name) + "unknown key";
    }
  }
  if (out.url.url.empty()) return where(file, node, key) + "has no url";
  return std::nullopt;
}

std::optional<std::string> read_workers(const std::string& file, std::string_view key, const toml::node& node,
                                        raw_options& raw) {
  const bool prefill = key == "prefill";
  const auto* arr = node.as_array();
  if (!arr) return where(file, node, key) + "must be an array of tables ([[" + std::string(key) + "]] url = ...)";
  std::vector<prefill_config> list;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    prefill_config pc;
    if (auto err = read_worker(file, std::string(key) + "[" + std::to_string(i) + "]", *arr->get(i), prefill, pc))
      return err;
    list.push_back(std::move(pc));
  }
  if (prefill) {
    raw.file_prefill = std::move(list);
  } else {
    raw.file_decode.emplace();
    for (auto& pc : list) raw.file_decode->push_back(std::move(pc.url));
  }
  return std::nullopt;
}

// Fills what the command line (or the environment) left unset from the TOML file; an error names the
// file, the line and the key.
std::optional<std::string> apply_config_file(CLI::App& app, const kind_map& kinds, raw_options& raw) {
  const std::string& file = raw.cfg.config_file;
  toml::table root;
  try {
    root = toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    if (e.source().begin.line == 0) return file + ": " + std::string(e.description());
    return file + ":" + std::to_string(e.source().begin.line) + ": " + std::string(e.description());
  }
  for (const auto& [k, v] : root) {
    const std::string_view key = k.str();
    if (key == "prefill" || key == "decode") {
      if (auto err = read_workers(file, key, v, raw)) return err;
      continue;
    }
    auto kind = kinds.find(key);
    if (kind == kinds.end()) return where(file, v, key) + "unknown key";
    CLI::Option* opt = app.get_option("--" + std::string(key));
    if (opt->count() > 0) continue;  // the command line (or the environment) wins
    if (key == "prefill-bootstrap-ports") raw.ports_from_file = true;
    auto values = as_strings(v, kind->second);
    if (!values) return where(file, v, key) + "must be " + std::string(kind_name(kind->second));
    try {
      for (const auto& s : *values) opt->add_result(s);
      opt->run_callback();
    } catch (const CLI::ParseError& e) {
      return where(file, v, key) + e.what();
    }
  }
  return std::nullopt;
}

// The worker lists: the command line's if it names any, else the file's; then the bootstrap ports.
std::optional<std::string> build_workers(raw_options& raw) {
  config& cfg = raw.cfg;
  // --prefill URL [PORT|none] ...: a value that is a port or "none" belongs to the URL before it.
  bool router_form_ports = false;
  for (const auto& arg : raw.prefill_args) {
    std::uint16_t port = 0;
    bool is_none = lower(arg) == "none";
    if (is_none || parse_port(arg, port)) {
      if (cfg.prefill.empty()) return "--prefill: '" + arg + "' must follow a worker URL";
      auto& last = cfg.prefill.back();
      if (last.bootstrap_port || last.url.url.empty())
        return "--prefill: two bootstrap ports after one URL ('" + arg + "')";
      if (!is_none) {
        if (port == 0) return "--prefill: bootstrap port 0 is not valid";
        last.bootstrap_port = port;
      }
      router_form_ports = true;
      continue;
    }
    prefill_config pc;
    std::string error;
    if (!parse_worker_url(arg, pc.url, error)) return "--prefill: " + error;
    cfg.prefill.push_back(std::move(pc));
  }
  if (raw.prefill_args.empty() && raw.file_prefill) {
    cfg.prefill = std::move(*raw.file_prefill);
    // --prefill-bootstrap-ports on the command line wins over the tables' bootstrap_port; the file
    // itself may say it only one way.
    for (const auto& pc : cfg.prefill) router_form_ports = router_form_ports || (pc.bootstrap_port && raw.ports_from_file);
  }
  for (const auto& arg : raw.decode_args) {
    worker_url u;
    std::string error;
    if (!parse_worker_url(arg, u, error)) return "--decode: " + error;
    cfg.decode.push_back(std::move(u));
  }
  if (raw.decode_args.empty() && raw.file_decode) cfg.decode = std::move(*raw.file_decode);

  const auto& ports = raw.bootstrap_ports;
  if (ports.empty()) return std::nullopt;
  if (router_form_ports)
    return "give bootstrap ports either with each prefill worker or with --prefill-bootstrap-ports, "
           "not both";
  for (int p : ports)
    if (p <= 0 || p > 65535) return "--prefill-bootstrap-ports: " + std::to_string(p) + " is not a valid port";
  if (ports.size() != 1 && ports.size() != cfg.prefill.size())
    return "Number of prefill URLs must match number of bootstrap ports (" + std::to_string(cfg.prefill.size()) +
           " URLs, " + std::to_string(ports.size()) + " ports)";
  for (std::size_t i = 0; i < cfg.prefill.size(); ++i)
    cfg.prefill[i].bootstrap_port = static_cast<std::uint16_t>(ports[ports.size() == 1 ? 0 : i]);
  return std::nullopt;
}

// Range checks, and seconds to milliseconds.
std::optional<std::string> check_and_convert(raw_options& raw) {
  config& cfg = raw.cfg;
  auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  if (!positive(raw.timeout_s)) return "--timeout must be a positive number of seconds";
  if (!positive(raw.connect_timeout_s)) return "--connect-timeout must be positive";
  if (!positive(raw.header_timeout_s)) return "--client-header-timeout must be positive";
  if (!positive(raw.body_timeout_s)) return "--client-body-timeout must be positive";
  if (!positive(raw.idle_timeout_s)) return "--upstream-idle-timeout must be positive";
  if (!std::isfinite(raw.grace_s) || raw.grace_s < 0) return "--shutdown-grace must be >= 0";
  if (!positive(raw.fail_timeout_s)) return "--fail-timeout must be positive";
  if (cfg.log_interval < 0) return "--log-interval must be >= 0";
  // A prefill/decode request holds a connection to each of its two workers at once (both are
  // reserved before either leg starts): with one connection in all, no such request could ever run.
  if (cfg.connector_limit < 2) return "--connector-limit must be at least 2 (a request holds a prefill and a decode connection)";
  if (cfg.connector_limit_per_host == 0) return "--connector-limit-per-host must be at least 1";
  if (cfg.max_body_size == 0) return "--max-body-size must be at least 1";
  if (cfg.metrics_port < -1 || cfg.metrics_port > 65535) return "--metrics-port must be a port (0: any free one), or -1 for none";
  cfg.policy = raw.policy == "po2"           ? policy_kind::po2
               : raw.policy == "round_robin" ? policy_kind::round_robin
                                             : policy_kind::random;
  cfg.timeout = seconds_to_ms(raw.timeout_s);
  cfg.connect_timeout = seconds_to_ms(raw.connect_timeout_s);
  cfg.client_header_timeout = seconds_to_ms(raw.header_timeout_s);
  cfg.client_body_timeout = seconds_to_ms(raw.body_timeout_s);
  cfg.upstream_idle_timeout = seconds_to_ms(raw.idle_timeout_s);
  cfg.shutdown_grace = seconds_to_ms(raw.grace_s);
  cfg.fail_timeout = seconds_to_ms(raw.fail_timeout_s);
  if (!std::isfinite(raw.hc_interval_s) || raw.hc_interval_s < 0)
    return "--health-check-interval must be >= 0 (0 turns active health checks off)";
  if (!positive(raw.hc_timeout_s)) return "--health-check-timeout must be positive";
  if (cfg.health_check_path.empty() || cfg.health_check_path.front() != '/' ||
      cfg.health_check_path.find_first_of(" \r\n") != std::string::npos)
    return "--health-check-path must be a path starting with '/' (no spaces)";
  if (cfg.health_check_failures == 0) return "--health-check-failures must be at least 1";
  if (cfg.health_check_passes == 0) return "--health-check-passes must be at least 1";
  cfg.health_check_interval = seconds_to_ms(raw.hc_interval_s);
  cfg.health_check_timeout = seconds_to_ms(raw.hc_timeout_s);
  cfg.dns.clear();
  for (const auto* list : {&raw.prefill_dns, &raw.decode_dns})
    for (const auto& text : *list) {
      dns_source src;
      std::string error;
      if (!parse_dns_source(text, list == &raw.prefill_dns, src, error)) return error;
      cfg.dns.push_back(std::move(src));
    }
  if (!positive(raw.dns_interval_s)) return "--dns-interval must be positive";
  cfg.dns_interval = seconds_to_ms(raw.dns_interval_s);
  if (!cfg.dns_server.empty() && !valid_dns_server(cfg.dns_server))
    return "--dns-server '" + cfg.dns_server + "': expected an IP address with an optional port, "
           "e.g. 10.0.0.2, 10.0.0.2:5353 or [fd00::2]:53";
  if (!cfg.access_log.empty() && cfg.access_log != "-") {
    // Fail at start-up, with the reason, rather than when the first request is logged.
    std::FILE* f = std::fopen(cfg.access_log.c_str(), "a");
    if (!f) return "--access-log: cannot open " + cfg.access_log + " for appending: " + std::strerror(errno);
    std::fclose(f);
  }
  cfg.load = raw.load == "worker" ? load_source::worker : load_source::local;
  if (!positive(raw.load_poll_s)) return "--load-poll-interval must be positive";
  cfg.load_poll_interval = seconds_to_ms(raw.load_poll_s);
  if (cfg.threads == 0) cfg.threads = std::max(1u, std::thread::hardware_concurrency());
  return std::nullopt;
}

// Help, version and CLI11's own errors, as the exit they ask for.
cli_result parse_error_exit(const CLI::App& app, const CLI::ParseError& e) {
  cli_result result;
  result.what = cli_result::action::exit;
  if (e.get_name() == "CallForHelp" || e.get_name() == "CallForAllHelp") {
    result.message = app.help();
  } else if (e.get_name() == "CallForVersion") {
    result.message = std::string(e.what()) + "\n";
  } else {
    result.message = std::string("pdlb: ") + e.what() + "\nRun with --help for usage.\n";
    result.exit_code = 2;
  }
  return result;
}

}  // namespace

cli_result parse_command_line(int argc, const char* const* argv) {
  raw_options raw;
  kind_map kinds;
  CLI::App app{"pdlb: a load balancer for SGLang prefill/decode disaggregation (drop-in for minilb)", "pdlb"};
  app.set_version_flag("--version", std::string("pdlb ") + PDLB_VERSION);
  app.get_formatter()->column_width(42);
  add_options(app, kinds, raw);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return parse_error_exit(app, e);
  }

  std::optional<std::string> error;
  if (!raw.cfg.config_file.empty()) error = apply_config_file(app, kinds, raw);
  if (!error) error = build_workers(raw);
  if (!error) error = check_and_convert(raw);
  cli_result result;
  if (error) {
    result.what = cli_result::action::exit;
    result.exit_code = 2;
    result.message = "pdlb: " + *error + "\n";
    return result;
  }
  if (raw.check_only) {
    result.what = cli_result::action::exit;
    result.message = "pdlb: configuration OK" +
                     (raw.cfg.config_file.empty() ? std::string() : " (" + raw.cfg.config_file + ")") + "\n";
    return result;
  }
  result.cfg = std::move(raw.cfg);
  return result;
}

cli_result parse_command_line(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  argv.reserve(args.size());
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_command_line(static_cast<int>(argv.size()), argv.data());
}

}  // namespace pdlb
