#include "pdlb/proxy.hpp"

#include "pdlb/logging.hpp"

#include "pdlb/json_escape.hpp"
#include "pdlb/pd_request.hpp"
#include "pdlb/policy.hpp"
#include "pdlb/worker_query.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core/error.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <sstream>

namespace pdlb {

namespace {

constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);

bool is_2xx(unsigned status) { return status >= 200 && status < 300; }

// Compares secrets without an early exit, so timing does not reveal how much matched.
bool constant_time_equal(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  std::size_t n = std::max(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

bool bearer_ok(const request& req, const std::string& key) {
  if (key.empty()) return true;
  auto auth = req[http::field::authorization];
  constexpr std::string_view prefix = "Bearer ";
  if (auth.size() < prefix.size() || !beast::iequals(auth.substr(0, prefix.size()), prefix))
    return false;
  return constant_time_equal(auth.substr(prefix.size()), key);
}

std::string failures_text(const std::vector<query_result>& results) {
  std::string out;
  for (const auto& r : results) {
    if (r.error.empty() && is_2xx(r.status)) continue;
    if (!out.empty()) out += "; ";
    if (!r.error.empty()) {
      out += r.error;
    } else {
      out += r.url + " answered " + std::to_string(r.status);
      if (!r.body.empty()) out += ": " + error_snippet(r.body);
    }
  }
  return out;
}

}  // namespace

namespace {

nlohmann::json worker_json(const worker& w, steady_time now) {
  nlohmann::json j = {{"url", w.url()},
                      {"worker_type", to_string(w.role)},
                      {"bootstrap_port", nullptr},
                      {"state", to_string(w.state(now))},
                      {"in_flight", w.in_flight.load()},
                      {"requests", w.requests.load()},
                      {"failures", w.failures.load()},
                      {"ejections", w.ejections.load()},
                      {"open_connections", w.host->open_connections()}};
  if (w.bootstrap_port) j["bootstrap_port"] = *w.bootstrap_port;
  if (w.failure_ejected(now))
    j["ejected_for_s"] = std::chrono::duration<double>(w.ejected_until() - now).count();
  // Ejected by the active health checks: until enough checks pass, however long that takes.
  if (w.check_ejected()) j["health_check_ejected"] = true;
  j["reported_load"] = w.reported_load.load();  // 0 unless --load-source worker
  return j;
}

nlohmann::json workers_json(const std::vector<std::shared_ptr<worker>>& pool) {
  const auto now = std::chrono::steady_clock::now();
  nlohmann::json list = nlohmann::json::array();
  for (const auto& w : pool) list.push_back(worker_json(*w, now));
  return list;
}

// Why an admin route is refused, or nothing. New admin routes need the admin key when one is set,
// and without one are open to loopback clients only (exchange::remote() is "ADDRESS:PORT" as Asio
// prints it, IPv6 without brackets).
std::optional<std::pair<http::status, std::string>> admin_refusal(const request& req, const std::string& key,
                                                                  const std::string& remote,
                                                                  std::string_view route) {
  if (!key.empty()) {
    if (bearer_ok(req, key)) return std::nullopt;
    return std::pair{http::status::unauthorized, std::string("missing or wrong admin API key")};
  }
  const std::string addr = remote.substr(0, remote.rfind(':'));
  if (addr.rfind("127.", 0) == 0 || addr == "::1" || addr.rfind("::ffff:127.", 0) == 0) return std::nullopt;
  return std::pair{http::status::forbidden, std::string(route) +
                                                " is an admin route: without --admin-api-key only loopback "
                                                "clients may call it (this client is " + remote + ")"};
}

// Decodes %XX escapes (a worker URL in a path or query); false on a malformed escape.
bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i] == '+' ? ' ' : in[i]);
      continue;
    }
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (i + 2 >= in.size()) return false;  // a '%' needs two hex digits after it
    int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

// The value of `name` in a query string ("a=1&b=2"), decoded; nullopt if absent or malformed.
std::optional<std::string> query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    auto amp = query.find('&');
    auto part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    auto eq = part.find('=');
    if (part.substr(0, eq) != name) continue;
    std::string value;
    if (eq == std::string_view::npos) return value;
    if (!percent_decode(part.substr(eq + 1), value)) return std::nullopt;
    return value;
  }
  return std::nullopt;
}


health_policy health_policy_of(const config& cfg) {
  health_policy h;
  h.max_fails = cfg.max_fails;
  h.fail_timeout = cfg.fail_timeout;
  return h;
}

// Every listed worker, prefill first.
std::vector<worker*> all_workers(const worker_set& set) {
  std::vector<worker*> all;
  for (auto& w : set.prefill) all.push_back(w.get());
  for (auto& w : set.decode) all.push_back(w.get());
  return all;
}

}  // namespace

upstream_options upstream_options_of(const config& cfg) {
  upstream_options uo;
  uo.connect_timeout = cfg.connect_timeout;
  uo.response_timeout = cfg.timeout;
  uo.idle_timeout = cfg.upstream_idle_timeout;
  return uo;
}

load_balancer::load_balancer(const config& cfg)
    : cfg_(cfg),
      health_(health_policy_of(cfg)),
      registry_(upstream_options_of(cfg), cfg.connector_limit_per_host, cfg.connector_limit,
                std::max(1u, cfg.threads)) {
  if (!cfg.access_log.empty()) {
    // A logger of its own: one JSON object per line, the time (UTC) put in by the pattern; flushed
    // each line so that a crash loses none.
    std::shared_ptr<spdlog::sinks::sink> sink;
    if (cfg.access_log == "-")
      sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
    else
      sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(cfg.access_log);
    access_log_ = std::make_shared<spdlog::logger>("access", std::move(sink));
    access_log_->set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ",%v})", spdlog::pattern_time_type::utc);
    access_log_->flush_on(spdlog::level::trace);
  }
  std::string error;
  for (const auto& p : cfg.prefill)
    if (!registry_.add(worker_role::prefill, p.url, p.bootstrap_port, error)) spdlog::warn("{}", error);
  for (const auto& d : cfg.decode)
    if (!registry_.add(worker_role::decode, d, std::nullopt, error)) spdlog::warn("{}", error);
}

load_balancer::~load_balancer() = default;

std::shared_ptr<worker> load_balancer::pick(const worker_set& set, worker_role role,
                                            std::mt19937_64& rng, const std::vector<const worker*>& avoid) {
  const bool is_prefill = role == worker_role::prefill;
  bool panic = false;
  auto w = pick_worker_for(set.of(role), cfg_.policy, is_prefill ? rr_prefill_ : rr_decode_, rng,
                           std::chrono::steady_clock::now(), avoid, panic);
  auto& flag = is_prefill ? panic_prefill_ : panic_decode_;
  if (flag.load(std::memory_order_relaxed) != panic && flag.exchange(panic) != panic) {
    if (panic)
      spdlog::warn("every {} worker is ejected: using them all anyway (panic mode)", to_string(role));
    else
      spdlog::info("a {} worker is available again: panic mode over", to_string(role));
  }
  return w;
}

void load_balancer::record_failure(worker& w, failure_kind kind, std::string_view what) {
  const auto now = std::chrono::steady_clock::now();
  if (w.record_failure(kind, health_, now)) {
    auto secs = std::chrono::duration<double>(w.ejected_until() - now).count();
    const log_fields fields({}, w.url());
    spdlog::warn("{} worker {} ejected for {:.0f} s after a failure ({}): {}", to_string(w.role), w.url(),
                 secs, to_string(kind), what);
  }
}

std::string load_balancer::status_line(double seconds) {
  auto requests = counters_.requests.load();
  auto errors = counters_.errors.load();
  double rate = seconds > 0 ? static_cast<double>(requests - last_requests_) / seconds : 0.0;
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(1);
  out << "requests/s: " << rate << ", in flight: " << counters_.in_flight.load()
      << ", errors: " << (errors - last_errors_) << " (total " << errors << ")"
      << ", client aborts: " << counters_.client_aborts.load()
      << ", retries: " << counters_.retries.load();
  const auto set = registry_.snapshot();
  const auto now = std::chrono::steady_clock::now();
  for (auto role : {worker_role::prefill, worker_role::decode}) {
    out << ", " << to_string(role) << " in flight: [";
    const auto& pool = set->of(role);
    for (std::size_t i = 0; i < pool.size(); ++i) {
      out << (i ? ", " : "") << pool[i]->url() << "=" << pool[i]->in_flight.load();
      if (auto st = pool[i]->state(now); st != worker_state::available) out << " (" << to_string(st) << ")";
    }
    out << "]";
  }
  last_requests_ = requests;
  last_errors_ = errors;
  return out.str();
}

net::awaitable<void> load_balancer::handle(exchange& ex) {
  counters_.requests.fetch_add(1, std::memory_order_relaxed);
  counters_.in_flight.fetch_add(1, std::memory_order_relaxed);
  // Runs when the handler ends, normally or unwound by cancellation (the client left).
  struct done_guard {
    done_guard(load_balancer& l, exchange& e) : lb(l), c(l.counters_), ex(e) {}
    load_balancer& lb;
    lb_counters& c;
    exchange& ex;
    const std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    request_record record;
    bool finished = false;
    ~done_guard() {
      c.in_flight.fetch_sub(1, std::memory_order_relaxed);
      if (!finished || record.client_gone) c.client_aborts.fetch_add(1, std::memory_order_relaxed);
      if (lb.access_log_) lb.log_access(ex, record, start, finished);
      const unsigned status = ex.response_status();
      if (status == 0) return;  // nothing was answered: the client left first
      std::string_view target = ex.req().target();
      const auto route = static_cast<std::size_t>(route_of(target.substr(0, target.find('?'))));
      auto& m = ex.context().metrics();
      m.requests[route][status_class_of(status)].add();
      m.duration[route].observe(std::chrono::steady_clock::now() - start);
      if (auto first = ex.first_body_byte_at(); first != std::chrono::steady_clock::time_point{})
        m.first_byte[route].observe(first - start);
    }
  } guard(*this, ex);
  guard.record.assign_id(ex.req()["X-Request-Id"], ex.context().rng());
  ex.set_response_headers(guard.record.id_header());  // on every answer, errors included
  co_await dispatch(ex, guard.record);
  guard.finished = true;
}

void load_balancer::log_access(exchange& ex, const request_record& record,
                               std::chrono::steady_clock::time_point start, bool finished) {
  const auto now = std::chrono::steady_clock::now();
  auto ms = [](std::chrono::steady_clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  std::string line;
  line.reserve(384);
  line += "\"request_id\":";
  append_json_string(line, record.id());
  line += ",\"method\":";
  append_json_string(line, ex.req().method_string());
  line += ",\"path\":";
  std::string_view target = ex.req().target();
  append_json_string(line, target.substr(0, target.find('?')));
  line += ",\"status\":" + std::to_string(ex.response_status());
  for (auto [name, w] : {std::pair{",\"prefill\":", record.prefill.get()}, std::pair{",\"decode\":", record.decode.get()}}) {
    line += name;
    if (w) append_json_string(line, w->url());
    else line += "null";
  }
  const auto first = ex.first_body_byte_at();
  line += fmt::format(",\"bytes_in\":{},\"bytes_out\":{},\"ttfb_ms\":", ex.req().body().size(), ex.body_bytes_sent());
  line += first == std::chrono::steady_clock::time_point{} ? std::string("null") : fmt::format("{:.3f}", ms(first - start));
  line += fmt::format(",\"duration_ms\":{:.3f},\"retries\":{},\"client_gone\":{}", ms(now - start), record.retries,
                      !finished || record.client_gone);
  access_log_->info("{}", line);
}

void load_balancer::watch_threads(http_server& server) {
  threads_.clear();
  for (std::size_t i = 0; i < server.thread_count(); ++i) threads_.push_back(&server.thread_ctx(i));
  // Somebody waits for a connection slot: each thread closes its idle connections that hold one.
  registry_.global_limit().on_wait([&server] {
    for (std::size_t i = 0; i < server.thread_count(); ++i)
      net::post(server.context(i), [&server, i] { server.thread_ctx(i).pools().prune(); });
  });
}

net::awaitable<void> load_balancer::dispatch(exchange& ex, request_record& record) {
  auto& req = ex.req();
  std::string_view target = req.target();
  std::string_view path = target.substr(0, target.find('?'));
  auto method = req.method();
  auto reply_error = [&](http::status s, std::string msg,
                         std::string_view extra = {}) -> net::awaitable<void> {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    co_await ex.respond(s, json_error_body(msg), "application/json", extra);
  };
  auto method_not_allowed = [&](std::string_view allow) -> net::awaitable<void> {
    std::string extra = "Allow: " + std::string(allow) + "\r\n";
    co_await reply_error(http::status::method_not_allowed,
                         "method " + std::string(req.method_string()) + " not allowed on " +
                             std::string(path),
                         extra);
  };

  const bool is_post = method == http::verb::post;
  const bool is_get = method == http::verb::get;

  if (path == "/generate" || path == "/v1/completions" || path == "/v1/chat/completions") {
    if (!is_post) co_return co_await method_not_allowed("POST");
    if (!bearer_ok(req, cfg_.api_key))
      co_return co_await reply_error(http::status::unauthorized, "missing or wrong API key",
                                     "WWW-Authenticate: Bearer\r\n");
    co_return co_await serve_pd_request(*this, ex, path, path != "/generate", record);
  }
  if (path == "/health") {
    if (!is_get && method != http::verb::head) co_return co_await method_not_allowed("GET");
    co_await ex.respond(http::status::ok, "", "text/plain");
    co_return;
  }
  if (path == "/health_generate") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_return co_await handle_health_generate(ex);
  }
  if (path == "/flush_cache" || path == "/abort_request" || path == "/start_profile" ||
      path == "/stop_profile") {
    if (!is_post) co_return co_await method_not_allowed("POST");
    if (!bearer_ok(req, cfg_.admin_api_key))
      co_return co_await reply_error(http::status::unauthorized, "missing or wrong admin API key",
                                     "WWW-Authenticate: Bearer\r\n");
    co_return co_await handle_fan_out(ex, path, false);
  }
  if (path == "/slow_down") co_return co_await handle_slow_down(ex);
  if (path == "/get_server_info") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_return co_await handle_server_info(ex);
  }
  if (path == "/v1/models" || path == "/get_model_info") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_return co_await handle_first_prefill(ex, path);
  }
  if (path == "/metrics") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_await ex.respond(http::status::ok, metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
    co_return;
  }
  if (path == "/get_loads" || path == "/v1/loads") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_return co_await handle_loads(ex);
  }
  if (path == "/pdlb/stats") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_await ex.respond(http::status::ok, stats_json());
    co_return;
  }
  if (path == "/readiness") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_return co_await handle_readiness(ex);
  }
  if (path == "/workers" || path.starts_with("/workers/") || path == "/add_worker" ||
      path == "/remove_worker" || path == "/list_workers" || path == "/register") {
    // Membership changes what every client gets: an admin route.
    if (auto refusal = admin_refusal(req, cfg_.admin_api_key, ex.remote(), path))
      co_return co_await reply_error(refusal->first, refusal->second,
                                     refusal->first == http::status::unauthorized ? "WWW-Authenticate: Bearer\r\n"
                                                                                  : "");
    co_return co_await handle_workers(ex, path);
  }
  co_await reply_error(http::status::not_found, "no route for " + std::string(path));
}

namespace {

// The outcome of an admin change: a status and a JSON body.
struct admin_answer {
  http::status status = http::status::ok;
  std::string body;
};

admin_answer admin_error(http::status s, std::string_view message) { return {s, json_error_body(message)}; }

// Adds a worker from an admin request's fields (strings as the client sent them).
admin_answer add_worker(worker_registry& registry, std::string_view type, std::string_view url_text,
                        std::optional<std::uint16_t> bootstrap_port) {
  worker_role role;
  if (type == "prefill") {
    role = worker_role::prefill;
  } else if (type == "decode") {
    role = worker_role::decode;
  } else {
    return admin_error(http::status::bad_request,
                       "worker_type must be \"prefill\" or \"decode\", not \"" + std::string(type) + "\"");
  }
  worker_url url;
  std::string error;
  if (!parse_worker_url(url_text, url, error)) return admin_error(http::status::bad_request, error);
  auto w = registry.add(role, url, bootstrap_port, error);
  if (!w) return admin_error(http::status::conflict, error);
  spdlog::info("{} worker {} added (bootstrap port {})", to_string(role), w->url(),
               w->bootstrap_port ? std::to_string(*w->bootstrap_port) : "none");
  return {http::status::ok, worker_json(*w, std::chrono::steady_clock::now()).dump()};
}

admin_answer drain_worker(worker_registry& registry, std::string_view url_text) {
  worker_url url;
  std::string error;
  // Accept the URL as listed, or in any form that normalises to it.
  std::string key = parse_worker_url(url_text, url, error) ? url.url : std::string(url_text);
  if (!registry.drain(key)) return admin_error(http::status::not_found, "no worker " + std::string(url_text));
  spdlog::info("worker {} draining: no new requests; it leaves once its last request ends", key);
  nlohmann::json j = {{"url", key}, {"state", "draining"}};
  return {http::status::ok, j.dump()};
}

// A bootstrap port from JSON: absent or null is nullopt; anything but an integer in 1..65535 is an
// error.
bool json_bootstrap_port(const nlohmann::json& body, const char* field, std::optional<std::uint16_t>& out,
                         std::string& error) {
  out.reset();
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer() || it->get<std::int64_t>() < 1 || it->get<std::int64_t>() > 65535) {
    error = std::string(field) + " must be an integer port (1-65535) or null";
    return false;
  }
  out = static_cast<std::uint16_t>(it->get<std::int64_t>());
  return true;
}

}  // namespace

net::awaitable<void> load_balancer::handle_workers(exchange& ex, std::string_view path) {
  const auto& req = ex.req();
  const auto method = req.method();
  std::string_view target = req.target();
  const auto qpos = target.find('?');
  const std::string_view query = qpos == std::string_view::npos ? std::string_view{} : target.substr(qpos + 1);
  admin_answer a;
  auto respond = [&](const admin_answer& ans) -> net::awaitable<void> {
    if (static_cast<unsigned>(ans.status) >= 400) counters_.errors.fetch_add(1, std::memory_order_relaxed);
    co_await ex.respond(ans.status, ans.body);
  };
  auto allow = [&](http::verb v, std::string_view name) -> std::optional<admin_answer> {
    if (method == v) return std::nullopt;
    return admin_error(http::status::method_not_allowed,
                       "method " + std::string(req.method_string()) + " not allowed on " + std::string(path) +
                           " (use " + std::string(name) + ")");
  };

  if (path == "/workers" || path == "/list_workers") {
    if (path == "/workers" && method == http::verb::post) {
      auto body = nlohmann::json::parse(req.body(), nullptr, false);
      std::string error;
      std::optional<std::uint16_t> port;
      if (body.is_discarded() || !body.is_object())
        a = admin_error(http::status::bad_request, "the body must be a JSON object");
      else if (!body.contains("url") || !body["url"].is_string())
        a = admin_error(http::status::bad_request, "\"url\" (a string) is required");
      else if (!body.contains("worker_type") || !body["worker_type"].is_string())
        a = admin_error(http::status::bad_request, "\"worker_type\" (\"prefill\" or \"decode\") is required");
      else if (!json_bootstrap_port(body, "bootstrap_port", port, error))
        a = admin_error(http::status::bad_request, error);
      else
        a = add_worker(registry_, body["worker_type"].get<std::string>(), body["url"].get<std::string>(), port);
      co_return co_await respond(a);
    }
    if (auto bad = allow(http::verb::get, path == "/workers" ? "GET or POST" : "GET")) co_return co_await respond(*bad);
    const auto set = registry_.snapshot();
    nlohmann::json list = workers_json(set->prefill);
    for (auto& w : workers_json(set->decode)) list.push_back(std::move(w));
    nlohmann::json out = {{"workers", list}};
    if (path == "/list_workers") {
      // The SGLang router's shape, beside the full one.
      nlohmann::json urls = nlohmann::json::array();
      for (const auto& w : list) urls.push_back(w["url"]);
      out["urls"] = std::move(urls);
    }
    // Named, not a braced temporary: GCC 12 destroys a braced temporary in a co_await operand
    // twice (a double free that valgrind caught once tests polled GET /workers).
    a = {http::status::ok, out.dump()};
    co_return co_await respond(a);
  }
  if (path.starts_with("/workers/")) {
    if (auto bad = allow(http::verb::delete_, "DELETE")) co_return co_await respond(*bad);
    std::string url;
    if (!percent_decode(path.substr(9), url))
      co_return co_await respond(admin_error(http::status::bad_request, "malformed percent-encoding in the URL"));
    co_return co_await respond(drain_worker(registry_, url));
  }
  if (auto bad = allow(http::verb::post, "POST")) co_return co_await respond(*bad);
  if (path == "/add_worker") {
    auto url = query_param(query, "url");
    auto type = query_param(query, "worker_type");
    auto port_text = query_param(query, "bootstrap_port");
    std::optional<std::uint16_t> port;
    if (port_text && !port_text->empty() && *port_text != "none") {
      unsigned v = 0;
      auto [end, ec] = std::from_chars(port_text->data(), port_text->data() + port_text->size(), v);
      if (ec != std::errc() || end != port_text->data() + port_text->size() || v == 0 || v > 65535)
        co_return co_await respond(admin_error(http::status::bad_request, "bootstrap_port must be a port (1-65535)"));
      port = static_cast<std::uint16_t>(v);
    }
    if (!url || url->empty())
      co_return co_await respond(admin_error(http::status::bad_request, "the url query parameter is required"));
    co_return co_await respond(add_worker(registry_, type.value_or("decode"), *url, port));
  }
  if (path == "/remove_worker") {
    auto url = query_param(query, "url");
    if (!url || url->empty())
      co_return co_await respond(admin_error(http::status::bad_request, "the url query parameter is required"));
    co_return co_await respond(drain_worker(registry_, *url));
  }
  // /register, minilb's (commented-out) route: {"mode", "registry_url", "bootstrap_port"}.
  auto body = nlohmann::json::parse(req.body(), nullptr, false);
  std::string error;
  std::optional<std::uint16_t> port;
  if (body.is_discarded() || !body.is_object())
    a = admin_error(http::status::bad_request, "the body must be a JSON object");
  else if (!body.contains("mode") || !body["mode"].is_string() || !body.contains("registry_url") ||
           !body["registry_url"].is_string())
    a = admin_error(http::status::bad_request, "\"mode\" and \"registry_url\" (strings) are required");
  else if (!json_bootstrap_port(body, "bootstrap_port", port, error))
    a = admin_error(http::status::bad_request, error);
  else
    a = add_worker(registry_, body["mode"].get<std::string>(), body["registry_url"].get<std::string>(), port);
  co_await respond(a);
}

net::awaitable<void> load_balancer::handle_readiness(exchange& ex) {
  const auto set = registry_.snapshot();
  const auto now = std::chrono::steady_clock::now();
  std::string reason;
  for (auto role : {worker_role::prefill, worker_role::decode}) {
    const auto& pool = set->of(role);
    if (std::none_of(pool.begin(), pool.end(), [&](const auto& w) { return w->available(now); })) {
      if (!reason.empty()) reason += "; ";
      reason += pool.empty() ? "no " + std::string(to_string(role)) + " worker"
                             : "no " + std::string(to_string(role)) + " worker is available (" +
                                   std::to_string(pool.size()) + " listed, all ejected or draining)";
    }
  }
  if (!reason.empty()) {
    co_await ex.respond(http::status::service_unavailable, json_error_body("not ready: " + reason));
    co_return;
  }
  nlohmann::json j = {{"status", "ready"}, {"prefill", set->prefill.size()}, {"decode", set->decode.size()}};
  co_await ex.respond(http::status::ok, j.dump());
}

// GET /get_loads: per worker, its requests in flight through pdlb and its own /get_load (SGLang's
// answer, as it gave it), asked of every worker at once. A worker that does not answer within
// loads_timeout is listed with the error instead, so that one stuck worker does not hide the rest.
net::awaitable<void> load_balancer::handle_loads(exchange& ex) {
  constexpr std::chrono::milliseconds loads_timeout{2000};
  const auto set = registry_.snapshot();
  const auto ws = all_workers(*set);
  auto results = co_await query_workers(ws, ex.context(), "GET", "/get_load", {}, std::min(loads_timeout, cfg_.timeout));
  const auto now = std::chrono::steady_clock::now();
  nlohmann::json list = nlohmann::json::array();
  for (std::size_t i = 0; i < ws.size(); ++i) {
    const worker& w = *ws[i];
    const query_result& r = results[i];
    nlohmann::json j = {{"url", w.url()},
                        {"worker_type", to_string(w.role)},
                        {"state", to_string(w.state(now))},
                        {"in_flight", w.in_flight.load(std::memory_order_relaxed)},
                        {"load", nullptr}};
    if (r.error.empty() && is_2xx(r.status)) {
      auto parsed = nlohmann::json::parse(r.body, nullptr, false);
      j["load"] = parsed.is_discarded() ? nlohmann::json(r.body) : std::move(parsed);
    } else {
      j["load_error"] = r.error.empty() ? "answered " + std::to_string(r.status) : r.error;
    }
    list.push_back(std::move(j));
  }
  nlohmann::json out = {{"workers", std::move(list)}};  // not in the co_await expression: GCC 12 rejects that
  co_await ex.respond(http::status::ok, out.dump());
}

std::string load_balancer::stats_json() const {
  nlohmann::json out = {{"requests", counters_.requests.load()},
                        {"errors", counters_.errors.load()},
                        {"in_flight", counters_.in_flight.load()},
                        {"client_aborts", counters_.client_aborts.load()},
                        {"retries", counters_.retries.load()}};
  const auto set = registry_.snapshot();
  out["prefill"] = workers_json(set->prefill);
  out["decode"] = workers_json(set->decode);
  return out.dump();
}

net::awaitable<void> load_balancer::fan_out_and_answer(exchange& ex, std::string method,
                                                       std::string path, std::string_view body,
                                                       http::status failure_status,
                                                       std::string failure_prefix) {
  const auto set = registry_.snapshot();
  auto results = co_await query_workers(all_workers(*set), ex.context(), std::move(method),
                                  std::move(path), body);
  std::string failed = failures_text(results);
  if (!failed.empty()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    co_await ex.respond(failure_status, json_error_body(failure_prefix + failed));
    co_return;
  }
  co_await ex.respond(http::status::ok, "", "text/plain");
}

net::awaitable<void> load_balancer::handle_fan_out(exchange& ex, std::string_view path, bool get) {
  co_await fan_out_and_answer(ex, get ? "GET" : "POST", std::string(path), ex.req().body(),
                              http::status::bad_gateway, std::string(path) + " failed on: ");
}

net::awaitable<void> load_balancer::handle_health_generate(exchange& ex) {
  co_await fan_out_and_answer(ex, "GET", "/health_generate", {}, http::status::service_unavailable,
                              "unhealthy workers: ");
}

net::awaitable<void> load_balancer::handle_server_info(exchange& ex) {
  const auto set = registry_.snapshot();
  auto results = co_await query_workers(all_workers(*set), ex.context(), "GET", "/get_server_info", {});
  std::string failed = failures_text(results);
  nlohmann::json out = {{"prefill", nlohmann::json::array()}, {"decode", nlohmann::json::array()},
                        {"internal_states", nlohmann::json::array()}};
  for (std::size_t i = 0; i < results.size() && failed.empty(); ++i) {
    auto parsed = nlohmann::json::parse(results[i].body, nullptr, false);
    if (parsed.is_discarded()) {
      failed = results[i].url + " answered invalid JSON";
      break;
    }
    bool is_prefill = i < set->prefill.size();
    if (!is_prefill && parsed.is_object()) {
      if (auto it = parsed.find("internal_states"); it != parsed.end() && it->is_array())
        for (auto& s : *it) out["internal_states"].push_back(s);
    }
    out[is_prefill ? "prefill" : "decode"].push_back(std::move(parsed));
  }
  if (!failed.empty()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    co_await ex.respond(http::status::bad_gateway,
                        json_error_body("get_server_info failed on: " + failed));
    co_return;
  }
  co_await ex.respond(http::status::ok, out.dump());
}

net::awaitable<void> load_balancer::handle_first_prefill(exchange& ex, std::string_view path) {
  const auto set = registry_.snapshot();
  if (set->prefill.empty()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    co_await ex.respond(http::status::service_unavailable,
                        json_error_body("no prefill worker available"));
    co_return;
  }
  std::string errors;
  for (auto& w : set->prefill) {
    auto r = co_await query_worker(*w, ex.context(), "GET", std::string(path), {});
    if (r.error.empty() && r.status == 200) {
      co_await ex.respond(http::status::ok, r.body);
      co_return;
    }
    if (!errors.empty()) errors += "; ";
    errors += r.error.empty() ? r.url + " answered " + std::to_string(r.status) : r.error;
  }
  counters_.errors.fetch_add(1, std::memory_order_relaxed);
  co_await ex.respond(http::status::bad_gateway,
                      json_error_body("no prefill worker answered " + std::string(path) + ": " + errors));
}

// POST /slow_down {"forward_sleep_time": S|null, "role": "decode"|"prefill", "workers": [url...]}
// makes the workers sleep S seconds before every forward pass (SGLang issue 6017), the trick the
// seed's decode test uses to pile requests up on a decode node. It changes how workers serve
// everyone, so it is an admin route: with --admin-api-key it needs that key; without one, only
// loopback clients may call it.
net::awaitable<void> load_balancer::handle_slow_down(exchange& ex) {
  auto fail = [&](http::status s, std::string msg, std::string_view extra = {}) -> net::awaitable<void> {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    co_await ex.respond(s, json_error_body(msg), "application/json", extra);
  };
  const auto& req = ex.req();
  if (req.method() != http::verb::post)
    co_return co_await fail(http::status::method_not_allowed,
                            "method " + std::string(req.method_string()) + " not allowed on /slow_down",
                            "Allow: POST\r\n");
  if (auto refusal = admin_refusal(req, cfg_.admin_api_key, ex.remote(), "/slow_down"))
    co_return co_await fail(refusal->first, refusal->second,
                            refusal->first == http::status::unauthorized ? "WWW-Authenticate: Bearer\r\n" : "");
  auto body = nlohmann::json::parse(req.body(), nullptr, false);
  if (body.is_discarded() || !body.is_object())
    co_return co_await fail(http::status::bad_request,
                            "body must be a JSON object like {\"forward_sleep_time\": 90.0}");
  nlohmann::json sleep;
  bool has_sleep = false;
  std::string role = "decode";
  std::vector<std::string> wanted;
  bool has_workers = false;
  for (auto& [key, value] : body.items()) {
    if (key == "forward_sleep_time") {
      if (!value.is_null() && !(value.is_number() && value.get<double>() >= 0))
        co_return co_await fail(http::status::bad_request,
                                "forward_sleep_time must be a number of seconds >= 0, or null to clear it");
      sleep = value;
      has_sleep = true;
    } else if (key == "role") {
      if (!value.is_string() || (value != "decode" && value != "prefill"))
        co_return co_await fail(http::status::bad_request, "role must be \"decode\" or \"prefill\"");
      role = value.get<std::string>();
    } else if (key == "workers") {
      if (!value.is_array() || value.empty())
        co_return co_await fail(http::status::bad_request, "workers must be a non-empty list of worker URLs");
      for (auto& u : value) {
        if (!u.is_string())
          co_return co_await fail(http::status::bad_request, "workers must be a list of URL strings");
        wanted.push_back(u.get<std::string>());
      }
      has_workers = true;
    } else {
      co_return co_await fail(http::status::bad_request,
                              "unknown field \"" + key + "\" (known: forward_sleep_time, role, workers)");
    }
  }
  if (!has_sleep)
    co_return co_await fail(http::status::bad_request,
                            "forward_sleep_time is required (seconds, or null to clear it)");

  const auto set = registry_.snapshot();
  const auto& pool = set->of(role == "prefill" ? worker_role::prefill : worker_role::decode);
  std::vector<worker*> targets;
  if (!has_workers) {
    for (auto& w : pool) targets.push_back(w.get());
  } else {
    for (auto& url : wanted) {
      // The configured URL may carry a trailing slash or not; compare without it.
      auto trim = [](std::string_view u) { return u.substr(0, u.find_last_not_of('/') + 1); };
      auto it = std::find_if(pool.begin(), pool.end(),
                             [&](const auto& w) { return trim(w->host->url().url) == trim(url); });
      if (it == pool.end()) {
        std::string known;
        for (auto& w : pool) known += (known.empty() ? "" : ", ") + w->host->url().url;
        if (known.empty()) known = "none";
        // Built before the co_await: GCC 12 destroys a temporary made by a conditional expression
        // inside a co_await expression twice (ASan found the double free here).
        std::string message = url + " is not a " + role + " worker of this pdlb (" + role + " workers: " + known + ")";
        co_return co_await fail(http::status::bad_request, std::move(message));
      }
      if (std::find(targets.begin(), targets.end(), it->get()) == targets.end()) targets.push_back(it->get());
    }
  }
  if (targets.empty())
    co_return co_await fail(http::status::service_unavailable, "no " + role + " worker configured");

  std::string forward = nlohmann::json{{"forward_sleep_time", sleep}}.dump();
  auto results = co_await query_workers(targets, ex.context(), "POST", "/slow_down", forward);
  std::string failed = failures_text(results);
  if (!failed.empty())
    co_return co_await fail(http::status::bad_gateway, "slow_down failed on: " + failed);
  nlohmann::json out = {{"forward_sleep_time", sleep}, {"role", role}, {"workers", nlohmann::json::array()}};
  for (auto& r : results) {
    auto answer = nlohmann::json::parse(r.body, nullptr, false);
    out["workers"].push_back({{"url", r.url}, {"status", r.status},
                              {"answer", answer.is_discarded() ? nlohmann::json(r.body) : answer}});
  }
  co_await ex.respond(http::status::ok, out.dump());
}

// Requests: counted per server thread, summed here.
void load_balancer::append_request_metrics(pdlb::metrics_text& out) const {
  auto each_thread = [&](auto&& f) {
    for (const thread_context* t : threads_) f(t->metrics());
  };
  constexpr std::size_t routes = thread_metrics::routes;
  static constexpr std::array<std::string_view, status_classes> class_names = {"1xx", "2xx", "3xx", "4xx", "5xx"};

  out.family("pdlb_build_info", "gauge", "pdlb's version (the value is always 1).");
  {
    std::string l;
    metrics_text::label(l, "version", PDLB_VERSION);
    out.sample("pdlb_build_info", l, std::uint64_t{1});
  }

  out.family("pdlb_requests_total", "counter", "Requests answered, by route and status class.");
  for (std::size_t r = 0; r < routes; ++r)
    for (std::size_t c = 0; c < status_classes; ++c) {
      std::uint64_t n = 0;
      each_thread([&](const thread_metrics& m) { n += m.requests[r][c].value(); });
      if (n == 0 && c != 1) continue;  // keep the family small: unused error classes are absent
      std::string l;
      metrics_text::label(l, "route", to_string(static_cast<route_label>(r)));
      metrics_text::label(l, "status", class_names[c]);
      out.sample("pdlb_requests_total", l, n);
    }

  auto route_histogram = [&](std::string_view name, std::string_view help,
                             const std::array<local_histogram, routes> thread_metrics::*member) {
    out.family(name, "histogram", help);
    for (std::size_t r = 0; r < routes; ++r) {
      local_histogram::snapshot h;
      each_thread([&](const thread_metrics& m) { h.merge((m.*member)[r]); });
      std::string l;
      metrics_text::label(l, "route", to_string(static_cast<route_label>(r)));
      out.histogram(name, l, h);
    }
  };
  route_histogram("pdlb_request_duration_seconds",
                  "Time from a request's arrival to the end of its answer, by route.", &thread_metrics::duration);
  route_histogram("pdlb_time_to_first_byte_seconds",
                  "Time from a request's arrival to the first byte of its response body (for a stream, its "
                  "first event: TTFT), by route.",
                  &thread_metrics::first_byte);

  out.family("pdlb_requests_in_flight", "gauge", "Requests being handled now.");
  out.sample("pdlb_requests_in_flight", "", static_cast<double>(counters_.in_flight.load(std::memory_order_relaxed)));
  out.family("pdlb_client_disconnects_total", "counter", "Clients that left before their whole answer.");
  out.sample("pdlb_client_disconnects_total", "", counters_.client_aborts.load(std::memory_order_relaxed));
  {
    std::uint64_t n = 0;
    each_thread([&](const thread_metrics& m) { n += m.stream_events.value(); });
    out.family("pdlb_stream_events_total", "counter", "Server-sent events relayed to clients.");
    out.sample("pdlb_stream_events_total", "", n);
  }
  out.family("pdlb_retries_total", "counter", "Attempts run again on another worker pair, by reason.");
  for (std::size_t r = 0; r < static_cast<std::size_t>(retry_reason::count); ++r) {
    std::uint64_t n = 0;
    each_thread([&](const thread_metrics& m) { n += m.retries[r].value(); });
    std::string l;
    metrics_text::label(l, "reason", to_string(static_cast<retry_reason>(r)));
    out.sample("pdlb_retries_total", l, n);
  }
  out.family("pdlb_cancelled_legs_total", "counter", "Worker legs stopped before the worker finished, by role and reason.");
  for (std::size_t role = 0; role < 2; ++role)
    for (std::size_t r = 0; r < static_cast<std::size_t>(cancel_reason::count); ++r) {
      std::uint64_t n = 0;
      each_thread([&](const thread_metrics& m) { n += m.cancelled_legs[role][r].value(); });
      std::string l;
      metrics_text::label(l, "role", role == 0 ? "prefill" : "decode");
      metrics_text::label(l, "reason", to_string(static_cast<cancel_reason>(r)));
      out.sample("pdlb_cancelled_legs_total", l, n);
    }
}

// Per worker. One server may be listed in both roles: its series differ by role.
void load_balancer::append_worker_metrics(pdlb::metrics_text& out) const {
  const auto set = registry_.snapshot();
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::pair<const worker*, std::string>> workers;  // with their worker,role labels
  for (auto role : {worker_role::prefill, worker_role::decode})
    for (const auto& w : set->of(role)) {
      std::string l;
      metrics_text::label(l, "worker", w->url());
      metrics_text::label(l, "role", to_string(role));
      workers.emplace_back(w.get(), std::move(l));
    }
  out.family("pdlb_worker_requests_total", "counter", "Requests sent to a worker.");
  for (auto& [w, l] : workers) out.sample("pdlb_worker_requests_total", l, w->requests.load(std::memory_order_relaxed));
  out.family("pdlb_worker_requests_in_flight", "gauge", "Requests in flight on a worker through this pdlb.");
  for (auto& [w, l] : workers)
    out.sample("pdlb_worker_requests_in_flight", l, static_cast<double>(w->in_flight.load(std::memory_order_relaxed)));
  out.family("pdlb_worker_errors_total", "counter",
             "A worker's failures, by kind (connect, timeout, reset, status, bootstrap: a failed KV hand-off).");
  for (auto& [w, l] : workers)
    for (auto kind : {failure_kind::connect, failure_kind::timeout, failure_kind::reset, failure_kind::status,
                      failure_kind::bootstrap}) {
      std::uint64_t n = w->failures_by_kind[static_cast<std::size_t>(kind)].load(std::memory_order_relaxed);
      // A refused connection is a connect failure that also ejects at once.
      if (kind == failure_kind::connect)
        n += w->failures_by_kind[static_cast<std::size_t>(failure_kind::refused)].load(std::memory_order_relaxed);
      std::string kl = l;
      metrics_text::label(kl, "kind", to_string(kind));
      out.sample("pdlb_worker_errors_total", kl, n);
    }
  out.family("pdlb_worker_response_seconds", "histogram",
             "A worker's response time: for a prefill the time to its answer, for a decode the time to its "
             "first byte (TTFT).");
  for (auto& [w, l] : workers) {
    local_histogram::snapshot h;
    for (std::size_t i = 0; i < w->metric_threads(); ++i) h.merge(w->slot(i).response);
    out.histogram("pdlb_worker_response_seconds", l, h);
  }
  out.family("pdlb_worker_state", "gauge", "A worker's state: 1 for the current one.");
  for (auto& [w, l] : workers) {
    const worker_state current = w->state(now);
    for (auto st : {worker_state::available, worker_state::ejected, worker_state::draining}) {
      std::string sl = l;
      metrics_text::label(sl, "state", to_string(st));
      out.sample("pdlb_worker_state", sl, std::uint64_t{st == current ? 1u : 0u});
    }
  }
  out.family("pdlb_ejections_total", "counter", "Times a worker was ejected by passive failure detection.");
  for (auto& [w, l] : workers) out.sample("pdlb_ejections_total", l, w->ejections.load(std::memory_order_relaxed));
}

// Connections belong to the server, not to a role: one series per URL, summed over its roles.
void load_balancer::append_connection_metrics(pdlb::metrics_text& out) const {
  const auto set = registry_.snapshot();
  struct host_counts {
    std::string_view url;
    std::size_t open = 0, idle = 0;
    std::uint64_t connects = 0;
  };
  std::vector<host_counts> hosts;
  for (auto role : {worker_role::prefill, worker_role::decode})
    for (const auto& w : set->of(role)) {
      auto it = std::find_if(hosts.begin(), hosts.end(), [&](const auto& h) { return h.url == w->url(); });
      if (it == hosts.end()) it = hosts.insert(hosts.end(), host_counts{w->url()});
      it->open += w->host->open_connections();
      it->idle += w->host->idle_connections();
      it->connects += w->host->connects();
    }
  out.family("pdlb_worker_connections", "gauge",
             "Connections to a worker: idle (pooled) or busy (carrying a request, or connecting).");
  for (const auto& h : hosts) {
    // Each count is read without stopping the threads: busy is what the open ones leave.
    const std::size_t idle = std::min(h.idle, h.open);
    for (auto [state, n] : {std::pair{"idle", idle}, std::pair{"busy", h.open - idle}}) {
      std::string l;
      metrics_text::label(l, "worker", h.url);
      metrics_text::label(l, "state", state);
      out.sample("pdlb_worker_connections", l, static_cast<double>(n));
    }
  }
  out.family("pdlb_worker_connects_total", "counter", "Connections established to a worker.");
  for (const auto& h : hosts) {
    std::string l;
    metrics_text::label(l, "worker", h.url);
    out.sample("pdlb_worker_connects_total", l, h.connects);
  }
}

std::string load_balancer::metrics_text() const {
  pdlb::metrics_text out;
  append_request_metrics(out);
  append_worker_metrics(out);
  append_connection_metrics(out);
  append_process_metrics(out);
  return out.text();
}

}  // namespace pdlb
