#include "pdlb/proxy.hpp"

#include "pdlb/json_escape.hpp"
#include "pdlb/pd_request.hpp"
#include "pdlb/policy.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core/error.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <array>
#include <sstream>

namespace pdlb {

namespace {

constexpr std::size_t admin_body_limit = 64 * 1024 * 1024;

constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);

std::string describe_failure(const worker& w, const upstream_call& call, const error_code& ec) {
  std::string msg(w.prefill ? "prefill" : "decode");
  msg += " worker ";
  msg += w.host->url().url;
  msg += " failed while ";
  msg += upstream_call::phase_name(call.where());
  msg += ": ";
  msg += ec == beast::error::timeout ? std::string("timed out") : ec.message();
  return msg;
}

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

struct fan_result {
  std::string url;
  unsigned status = 0;
  std::string body;
  std::string error;  // transport failure, empty if the worker answered
};

net::awaitable<fan_result> call_worker(worker& w, thread_context& ctx, std::string method,
                                       std::string path, std::string_view body) {
  fan_result r;
  r.url = w.host->url().url;
  upstream_call call(*w.host, ctx);
  if (auto ec = co_await call.start(method, path, body)) {
    r.error = describe_failure(w, call, ec);
    co_return r;
  }
  if (auto ec = co_await call.read_all(r.body, admin_body_limit)) {
    r.error = describe_failure(w, call, ec);
    co_return r;
  }
  r.status = call.status();
  call.release();
  co_return r;
}

// Calls every worker in `ws` at once; results in the order of `ws`.
net::awaitable<std::vector<fan_result>> fan_out(const std::vector<worker*>& ws, thread_context& ctx,
                                                std::string method, std::string path,
                                                std::string_view body) {
  if (ws.empty()) co_return std::vector<fan_result>{};
  auto ex = co_await net::this_coro::executor;
  using op_type = decltype(net::co_spawn(ex, call_worker(*ws[0], ctx, method, path, body),
                                         net::deferred));
  std::vector<op_type> ops;
  ops.reserve(ws.size());
  for (worker* w : ws)
    ops.push_back(net::co_spawn(ex, call_worker(*w, ctx, method, path, body), net::deferred));
  auto [order, errors, results] = co_await net::experimental::make_parallel_group(std::move(ops))
                                      .async_wait(net::experimental::wait_for_all(),
                                                  net::use_awaitable);
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (errors[i]) {
      // call_worker only throws on cancellation; rethrow so the handler unwinds.
      std::rethrow_exception(errors[i]);
    }
  }
  co_return std::move(results);
}

std::string failures_text(const std::vector<fan_result>& results) {
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

load_balancer::load_balancer(const config& cfg)
    : cfg_(cfg), global_limit_(std::make_shared<conn_limiter>(cfg.connector_limit)) {
  upstream_options uo;
  uo.connect_timeout = cfg.connect_timeout;
  uo.response_timeout = cfg.timeout;
  uo.idle_timeout = cfg.upstream_idle_timeout;
  for (const auto& p : cfg.prefill) {
    auto w = std::make_unique<worker>();
    w->host = std::make_unique<upstream_host>(p.url, cfg.connector_limit_per_host, global_limit_, uo);
    w->prefill = true;
    w->bootstrap_port = p.bootstrap_port;
    prefill_.push_back(std::move(w));
  }
  for (const auto& d : cfg.decode) {
    auto w = std::make_unique<worker>();
    w->host = std::make_unique<upstream_host>(d, cfg.connector_limit_per_host, global_limit_, uo);
    decode_.push_back(std::move(w));
  }
}

load_balancer::~load_balancer() = default;

worker& load_balancer::pick(const std::vector<std::unique_ptr<worker>>& pool,
                            std::atomic<std::size_t>& rr, std::mt19937_64& rng) {
  auto load = [&](std::size_t i) { return pool[i]->in_flight.load(std::memory_order_relaxed); };
  return *pool[pick_worker(cfg_.policy, pool.size(), load, rng, rr)];
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
      << ", client aborts: " << counters_.client_aborts.load() << ", prefill in flight: [";
  for (std::size_t i = 0; i < prefill_.size(); ++i)
    out << (i ? ", " : "") << prefill_[i]->host->url().url << "=" << prefill_[i]->in_flight.load();
  out << "], decode in flight: [";
  for (std::size_t i = 0; i < decode_.size(); ++i)
    out << (i ? ", " : "") << decode_[i]->host->url().url << "=" << decode_[i]->in_flight.load();
  out << "]";
  last_requests_ = requests;
  last_errors_ = errors;
  return out.str();
}

net::awaitable<void> load_balancer::handle(exchange& ex) {
  counters_.requests.fetch_add(1, std::memory_order_relaxed);
  counters_.in_flight.fetch_add(1, std::memory_order_relaxed);
  struct done_guard {
    lb_counters& c;
    exchange& ex;
    bool finished = false;
    ~done_guard() {
      c.in_flight.fetch_sub(1, std::memory_order_relaxed);
      // Unwound without finishing: the client left, and the handler was cancelled.
      if (!finished) c.client_aborts.fetch_add(1, std::memory_order_relaxed);
    }
  } guard{counters_, ex};
  co_await dispatch(ex);
  guard.finished = true;
}

net::awaitable<void> load_balancer::dispatch(exchange& ex) {
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
    co_return co_await serve_pd_request(*this, ex, path, path != "/generate");
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
  if (path == "/get_server_info") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_return co_await handle_server_info(ex);
  }
  if (path == "/v1/models" || path == "/get_model_info") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_return co_await handle_first_prefill(ex, path);
  }
  if (path == "/pdlb/stats") {
    if (!is_get) co_return co_await method_not_allowed("GET");
    co_await ex.respond(http::status::ok, stats_json());
    co_return;
  }
  co_await reply_error(http::status::not_found, "no route for " + std::string(path));
}

std::string load_balancer::stats_json() const {
  nlohmann::json out = {{"requests", counters_.requests.load()},
                        {"errors", counters_.errors.load()},
                        {"in_flight", counters_.in_flight.load()},
                        {"client_aborts", counters_.client_aborts.load()}};
  auto workers = [](const std::vector<std::unique_ptr<worker>>& pool) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& w : pool)
      list.push_back({{"url", w->host->url().url},
                      {"in_flight", w->in_flight.load()},
                      {"requests", w->requests.load()},
                      {"failures", w->failures.load()},
                      {"open_connections", w->host->open_connections()}});
    return list;
  };
  out["prefill"] = workers(prefill_);
  out["decode"] = workers(decode_);
  return out.dump();
}

std::vector<worker*> load_balancer::all_workers() const {
  std::vector<worker*> all;
  for (auto& w : prefill_) all.push_back(w.get());
  for (auto& w : decode_) all.push_back(w.get());
  return all;
}

net::awaitable<void> load_balancer::fan_out_and_answer(exchange& ex, std::string method,
                                                       std::string path, std::string_view body,
                                                       http::status failure_status,
                                                       std::string failure_prefix) {
  auto results = co_await fan_out(all_workers(), ex.context(), std::move(method),
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
  auto results = co_await fan_out(all_workers(), ex.context(), "GET", "/get_server_info", {});
  std::string failed = failures_text(results);
  nlohmann::json out = {{"prefill", nlohmann::json::array()}, {"decode", nlohmann::json::array()},
                        {"internal_states", nlohmann::json::array()}};
  for (std::size_t i = 0; i < results.size() && failed.empty(); ++i) {
    auto parsed = nlohmann::json::parse(results[i].body, nullptr, false);
    if (parsed.is_discarded()) {
      failed = results[i].url + " answered invalid JSON";
      break;
    }
    bool is_prefill = i < prefill_.size();
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
  if (prefill_.empty()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    co_await ex.respond(http::status::service_unavailable,
                        json_error_body("no prefill worker available"));
    co_return;
  }
  std::string errors;
  for (auto& w : prefill_) {
    auto r = co_await call_worker(*w, ex.context(), "GET", std::string(path), {});
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

}  // namespace pdlb
