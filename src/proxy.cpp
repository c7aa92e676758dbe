#include "pdlb/proxy.hpp"

#include "pdlb/json_escape.hpp"
#include "pdlb/logprob_merge.hpp"
#include "pdlb/policy.hpp"
#include "pdlb/rewrite.hpp"
#include "pdlb/sse.hpp"

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

// How a leg ended. Failures are values, not exceptions: the parallel group's cancellation
// condition reads them to stop the other leg at once.
struct leg_outcome {
  bool ok = true;            ///< The leg did its whole job.
  bool answered = false;     ///< Decode: the worker's own error answer was relayed to the client.
  bool client_gone = false;  ///< Decode: a write to the client failed.
  bool cancelled = false;    ///< !ok because the leg was cancelled (by the other leg, or the client).
  http::status status = http::status::ok;  ///< For !ok: what to tell the client.
  std::string message;
};
// Distinct types, so that a cancellation condition can tell which leg completed.
struct prefill_outcome : leg_outcome {};
struct decode_outcome : leg_outcome {};

http::status status_for(const error_code& ec) {
  if (ec == beast::error::timeout) return http::status::gateway_timeout;
  if (ec == upstream_errc::pool_exhausted) return http::status::service_unavailable;
  return http::status::bad_gateway;
}

std::string describe_failure(std::string_view role, const worker& w, const upstream_call& call,
                             const error_code& ec) {
  std::string msg(role);
  msg += " worker ";
  msg += w.host->url().url;
  msg += " failed while ";
  msg += upstream_call::phase_name(call.where());
  msg += ": ";
  msg += ec == beast::error::timeout ? std::string("timed out") : ec.message();
  return msg;
}

std::string snippet(std::string_view body) {
  constexpr std::size_t max = 512;
  std::size_t cut = std::min(max, body.size());
  // Cut on a character boundary: back off UTF-8 continuation bytes (at most three).
  for (int i = 0; i < 3 && cut < body.size() && cut > 0 && (static_cast<unsigned char>(body[cut]) & 0xC0) == 0x80; ++i)
    --cut;
  std::string s(body.substr(0, cut));
  if (body.size() > cut) s += "...";
  return s;
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

// RAII: a request in flight on a worker.
struct worker_lease {
  explicit worker_lease(worker& w) : w_(w) {
    w_.in_flight.fetch_add(1, std::memory_order_relaxed);
    w_.requests.fetch_add(1, std::memory_order_relaxed);
  }
  ~worker_lease() { release(); }
  // Ends the lease as soon as the worker's part is over, before the client is answered: the next
  // request of a fast client must already see the worker's true load.
  void release() {
    if (held_) w_.in_flight.fetch_sub(1, std::memory_order_relaxed);
    held_ = false;
  }
  worker_lease(const worker_lease&) = delete;
  worker_lease& operator=(const worker_lease&) = delete;
  worker& w_;
  bool held_ = true;
};

struct fan_result {
  std::string url;
  unsigned status = 0;
  std::string body;
  std::string error;  // transport failure, empty if the worker answered
};

net::awaitable<fan_result> call_worker(worker& w, std::size_t thread, std::string method,
                                       std::string path, std::string_view body) {
  fan_result r;
  r.url = w.host->url().url;
  upstream_call call(*w.host, thread);
  if (auto ec = co_await call.start(method, path, body)) {
    r.error = describe_failure(w.prefill ? "prefill" : "decode", w, call, ec);
    co_return r;
  }
  if (auto ec = co_await call.read_all(r.body, admin_body_limit)) {
    r.error = describe_failure(w.prefill ? "prefill" : "decode", w, call, ec);
    co_return r;
  }
  r.status = call.status();
  call.release();
  co_return r;
}

// Calls every worker in `ws` at once; results in the order of `ws`.
net::awaitable<std::vector<fan_result>> fan_out(const std::vector<worker*>& ws, std::size_t thread,
                                                std::string method, std::string path,
                                                std::string_view body) {
  if (ws.empty()) co_return std::vector<fan_result>{};
  auto ex = co_await net::this_coro::executor;
  using op_type = decltype(net::co_spawn(ex, call_worker(*ws[0], thread, method, path, body),
                                         net::deferred));
  std::vector<op_type> ops;
  ops.reserve(ws.size());
  for (worker* w : ws)
    ops.push_back(net::co_spawn(ex, call_worker(*w, thread, method, path, body), net::deferred));
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
      if (!r.body.empty()) out += ": " + snippet(r.body);
    }
  }
  return out;
}

// Awaitable one-shot event on a single thread: a timer that never expires, cancelled to signal.
struct one_shot_event {
  explicit one_shot_event(const net::any_io_executor& ex)
      : timer(ex, net::steady_timer::time_point::max()) {}
  void set() {
    ready = true;
    timer.cancel();
  }
  net::awaitable<void> wait() {
    while (!ready) co_await timer.async_wait(tuple_awaitable);
  }
  net::steady_timer timer;
  bool ready = false;
};

// Non-stream: both legs run to the end, unless one fails; then the other is cancelled at once
// (its connection closed, so the worker frees what it holds).
struct unary_group_condition {
  template <class Outcome>
  net::cancellation_type_t operator()(std::exception_ptr e, const Outcome& o) const {
    return e || !o.ok ? net::cancellation_type::terminal : net::cancellation_type::none;
  }
};

// Stream: a failed prefill cancels the decode; a decode leg that ended for any reason (the client
// has its whole answer, or an error) also cancels a prefill leg still running.
struct stream_group_condition {
  net::cancellation_type_t operator()(std::exception_ptr e, const prefill_outcome& o) const {
    return e || !o.ok ? net::cancellation_type::terminal : net::cancellation_type::none;
  }
  net::cancellation_type_t operator()(std::exception_ptr, const decode_outcome&) const {
    return net::cancellation_type::terminal;
  }
};

}  // namespace

load_balancer::load_balancer(const config& cfg, std::size_t threads)
    : cfg_(cfg), global_limit_(std::make_shared<conn_limiter>(cfg.connector_limit)) {
  upstream_options uo;
  uo.connect_timeout = cfg.connect_timeout;
  uo.response_timeout = cfg.timeout;
  uo.idle_timeout = cfg.upstream_idle_timeout;
  for (const auto& p : cfg.prefill) {
    auto w = std::make_unique<worker>();
    w->host = std::make_unique<upstream_host>(p.url, threads, cfg.connector_limit_per_host,
                                              global_limit_, uo);
    w->prefill = true;
    w->bootstrap_port = p.bootstrap_port;
    prefill_.push_back(std::move(w));
  }
  for (const auto& d : cfg.decode) {
    auto w = std::make_unique<worker>();
    w->host = std::make_unique<upstream_host>(d, threads, cfg.connector_limit_per_host,
                                              global_limit_, uo);
    decode_.push_back(std::move(w));
  }
}

load_balancer::~load_balancer() = default;

void load_balancer::close_idle(std::size_t thread) {
  for (auto& w : prefill_) w->host->close_idle(thread);
  for (auto& w : decode_) w->host->close_idle(thread);
}

void load_balancer::prune_idle(std::size_t thread) {
  for (auto& w : prefill_) w->host->prune_idle(thread);
  for (auto& w : decode_) w->host->prune_idle(thread);
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
    co_return co_await handle_pd(ex, path, path != "/generate");
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

net::awaitable<void> load_balancer::handle_pd(exchange& ex, std::string_view path, bool openai) {
  const std::string& body = ex.req().body();
  // Leases end before the client is answered (see worker_lease::release).
  std::optional<worker_lease> p_lease;
  std::optional<worker_lease> d_lease;
  auto fail = [&](http::status s, std::string msg) -> net::awaitable<void> {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    if (p_lease) p_lease->release();
    if (d_lease) d_lease->release();
    co_await ex.respond(s, json_error_body(msg));
  };

  inspect_result inspected = inspect_request(body, openai ? route_kind::openai : route_kind::generate);
  if (!inspected.ok) co_return co_await fail(http::status::bad_request, inspected.error);
  if (prefill_.empty()) co_return co_await fail(http::status::service_unavailable, "no prefill worker available");
  if (decode_.empty()) co_return co_await fail(http::status::service_unavailable, "no decode worker available");

  auto& rng = thread_rng();
  worker& p = *prefill_[pick_worker(
      cfg_.policy, prefill_.size(), [&](std::size_t i) { return prefill_[i]->in_flight.load(std::memory_order_relaxed); },
      rng, rr_prefill_)];
  worker& d = *decode_[pick_worker(
      cfg_.policy, decode_.size(), [&](std::size_t i) { return decode_[i]->in_flight.load(std::memory_order_relaxed); },
      rng, rr_decode_)];
  p_lease.emplace(p);
  d_lease.emplace(d);

  const request_info& info = inspected.info;
  std::size_t items = info.batch_size.value_or(1);
  std::vector<std::uint64_t> rooms(items);
  for (auto& r : rooms) r = random_room(rng);
  bootstrap_fields boot{p.host->url().bootstrap_host, p.bootstrap_port};
  const std::string rewritten = rewrite_request(body, info, boot, rooms);
  const bool want_logprobs = info.return_logprob;
  const std::size_t thread = ex.thread_index();
  const std::string fwd_path(path);

  auto executor = co_await net::this_coro::executor;
  auto failed_leg = [&](const char* role, worker& w, const upstream_call& call, const error_code& ec) {
    leg_outcome o;
    o.ok = false;
    o.cancelled = ec == net::error::operation_aborted;
    o.status = status_for(ec);
    o.message = describe_failure(role, w, call, ec);
    return o;
  };
  auto error_answer = [&](worker& w, unsigned status, std::string_view body) {
    leg_outcome o;
    o.ok = false;
    o.status = static_cast<http::status>(status);
    o.message = std::string(w.prefill ? "prefill" : "decode") + " worker " + w.host->url().url +
                " answered " + std::to_string(status) + ": " + snippet(body);
    return o;
  };
  // The outcome that decides the client's answer: a failed prefill first (its failure usually
  // causes the decode's), then a failed decode.
  // A leg cancelled because the other failed is not a failure of its own.
  auto report = [&](const leg_outcome& po, const leg_outcome& dout) -> std::optional<leg_outcome> {
    if (!po.ok && !po.cancelled) {
      p.failures.fetch_add(1, std::memory_order_relaxed);
      return po;
    }
    if (!dout.ok && !dout.cancelled) {
      d.failures.fetch_add(1, std::memory_order_relaxed);
      return dout;
    }
    return std::nullopt;
  };

  if (!info.stream) {
    prefill_logprobs prefill_lp;
    unsigned decode_status = 0;
    std::string decode_body;
    std::string decode_type;

    auto prefill_leg = [&]() -> net::awaitable<prefill_outcome> {
      upstream_call call(*p.host, thread);
      if (auto ec = co_await call.start("POST", fwd_path, rewritten))
        co_return prefill_outcome{failed_leg("prefill", p, call, ec)};
      std::string pbody;
      if (auto ec = co_await call.read_all(pbody, cfg_.max_body_size))
        co_return prefill_outcome{failed_leg("prefill", p, call, ec)};
      if (!is_2xx(call.status())) co_return prefill_outcome{error_answer(p, call.status(), pbody)};
      call.release();
      if (want_logprobs) extract_input_logprobs(pbody, prefill_lp);
      co_return prefill_outcome{};
    };
    auto decode_leg = [&]() -> net::awaitable<decode_outcome> {
      upstream_call call(*d.host, thread);
      if (auto ec = co_await call.start("POST", fwd_path, rewritten))
        co_return decode_outcome{failed_leg("decode", d, call, ec)};
      if (auto ec = co_await call.read_all(decode_body, cfg_.max_body_size))
        co_return decode_outcome{failed_leg("decode", d, call, ec)};
      decode_status = call.status();
      decode_type = std::string(call.content_type());
      call.release();
      co_return decode_outcome{};
    };

    auto [order, pe, po, de, dout] =
        co_await net::experimental::make_parallel_group(
            net::co_spawn(executor, prefill_leg(), net::deferred),
            net::co_spawn(executor, decode_leg(), net::deferred))
            .async_wait(unary_group_condition{}, net::use_awaitable);
    // A leg that threw was cancelled: by the other leg's failure (reported here), or from outside
    // because the client left (then nothing is written).
    if (auto f = report(po, dout)) {
      spdlog::warn("request failed: {}", f->message);
      co_return co_await fail(f->status, f->message);
    }
    if (pe || de || !po.ok || !dout.ok) {
      ex.close_after();  // both legs were cancelled: the client left
      co_return;
    }
    p_lease->release();
    d_lease->release();
    if (decode_status >= 400) counters_.errors.fetch_add(1, std::memory_order_relaxed);
    if (want_logprobs && is_2xx(decode_status)) {
      if (auto merged = merge_input_logprobs(decode_body, prefill_lp)) decode_body = std::move(*merged);
    }
    co_await ex.respond(static_cast<http::status>(decode_status), decode_body,
                        decode_type.empty() ? std::string_view("application/json") : std::string_view(decode_type));
    co_return;
  }

  // Streaming: the decode worker's events reach the client as they arrive.
  bool headers_sent = false;
  bool client_write_pending = false;  // a write to the client is under way in the decode leg
  prefill_logprobs prefill_lp;
  one_shot_event prefill_ready(executor);
  // Writes to the client from the decode leg, marking the write so that a cancellation in its
  // middle is known.
  auto client_write = [&](std::string_view data) -> net::awaitable<error_code> {
    client_write_pending = true;
    auto ec = co_await ex.write_chunk(data);
    client_write_pending = false;
    co_return ec;
  };

  auto prefill_leg = [&]() -> net::awaitable<prefill_outcome> {
    upstream_call call(*p.host, thread);
    if (auto ec = co_await call.start("POST", fwd_path, rewritten))
      co_return prefill_outcome{failed_leg("prefill", p, call, ec)};
    if (!is_2xx(call.status())) {
      std::string pbody;
      co_await call.read_all(pbody, 64 * 1024);
      co_return prefill_outcome{error_answer(p, call.status(), pbody)};
    }
    // Read the prefill's whole answer so its connection can be reused; keep its logprobs.
    sse_splitter splitter;
    for (;;) {
      std::size_t n = 0;
      bool done = false;
      char* buf = upstream_scratch();
      if (auto ec = co_await call.read_some(buf, upstream_scratch_size, n, done))
        co_return prefill_outcome{failed_leg("prefill", p, call, ec)};
      if (want_logprobs && n) {
        splitter.feed(std::string_view(buf, n));
        while (auto ev = splitter.next_event()) {
          if (auto data = event_data(*ev); data && !is_done_payload(*data))
            collect_stream_logprobs(*data, prefill_lp);
        }
      }
      if (done) break;
    }
    call.release();
    p_lease->release();
    prefill_ready.set();
    co_return prefill_outcome{};
  };

  auto decode_leg = [&]() -> net::awaitable<decode_outcome> {
    decode_outcome client_gone;
    client_gone.client_gone = true;
    upstream_call call(*d.host, thread);
    if (auto ec = co_await call.start("POST", fwd_path, rewritten))
      co_return decode_outcome{failed_leg("decode", d, call, ec)};
    if (!is_2xx(call.status())) {
      // Relay the decode worker's own error answer, as minilb does for non-stream requests.
      std::string dbody;
      if (auto ec = co_await call.read_all(dbody, cfg_.max_body_size))
        co_return decode_outcome{failed_leg("decode", d, call, ec)};
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      headers_sent = true;
      std::string ct(call.content_type());
      call.release();
      p_lease->release();  // the prefill leg is cancelled once this leg returns
      d_lease->release();
      client_write_pending = true;
      co_await ex.respond(static_cast<http::status>(call.status()), dbody,
                          ct.empty() ? std::string_view("application/json") : std::string_view(ct));
      client_write_pending = false;
      decode_outcome answered;
      answered.answered = true;
      co_return answered;
    }
    headers_sent = true;
    client_write_pending = true;
    if (co_await ex.begin_stream(http::status::ok)) co_return client_gone;
    client_write_pending = false;
    std::string pending;  // bytes of an event not yet complete
    std::string out;
    sse_splitter splitter;
    for (;;) {
      // Merging needs the prefill's logprobs: wait for them before reading, never between a read
      // into the thread's scratch buffer and its use (another stream would overwrite it).
      if (want_logprobs && !prefill_ready.ready) co_await prefill_ready.wait();
      std::size_t n = 0;
      bool done = false;
      char* buf = upstream_scratch();
      if (auto ec = co_await call.read_some(buf, upstream_scratch_size, n, done))
        co_return decode_outcome{failed_leg("decode", d, call, ec)};
      // From here to the write below, no co_await but the (copying) client write.
      std::string_view piece(buf, n);
      error_code wec;
      if (want_logprobs) {
        splitter.feed(piece);
        out.clear();
        while (auto ev = splitter.next_event()) {
          auto data = event_data(*ev);
          std::optional<std::string> merged;
          if (data && !is_done_payload(*data)) merged = merge_event_logprobs(*data, prefill_lp);
          if (merged) {
            out += "data: ";
            out += *merged;
            out += "\n\n";
          } else {
            out.append(ev->data(), ev->size());
          }
        }
        if (done) out.append(splitter.pending());
        wec = co_await client_write(out);
      } else if (pending.empty()) {
        // Forward whole events straight from the read buffer; keep a partial tail.
        std::size_t whole = done ? piece.size() : complete_prefix_length(piece);
        pending.assign(piece.substr(whole));  // before the write: the scratch is not ours after it
        wec = co_await client_write(piece.substr(0, whole));
      } else {
        pending.append(piece);
        std::size_t whole = done ? pending.size() : complete_prefix_length(pending);
        wec = co_await client_write(std::string_view(pending).substr(0, whole));
        pending.erase(0, whole);
      }
      if (wec) co_return client_gone;
      if (done) break;
    }
    call.release();
    d_lease->release();
    if (co_await ex.end_stream()) co_return client_gone;
    co_return decode_outcome{};
  };

  auto [order, pe, po, de, dout] =
      co_await net::experimental::make_parallel_group(
          net::co_spawn(executor, prefill_leg(), net::deferred),
          net::co_spawn(executor, decode_leg(), net::deferred))
          .async_wait(stream_group_condition{}, net::use_awaitable);
  if (!de) {
    if (dout.answered) co_return;  // the decode's own error answer was relayed
    if (dout.client_gone) {
      ex.close_after();
      co_return;
    }
    if (dout.ok) co_return;  // the client has its whole answer
  }
  // Here the decode leg failed, or was cancelled: by a failed prefill, or because the client left.
  auto f = report(po, de ? decode_outcome{} : dout);
  if (!f) {
    ex.close_after();
    co_return;
  }
  if (client_write_pending) {
    // The decode leg was cancelled in the middle of a write: the response framing is broken, so
    // the only honest end is to close the connection.
    spdlog::warn("stream failed: {}", f->message);
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    ex.abort_stream();
    co_return;
  }
  counters_.errors.fetch_add(1, std::memory_order_relaxed);
  spdlog::warn("stream failed: {}", f->message);
  p_lease->release();
  d_lease->release();
  if (!headers_sent) {
    co_await ex.respond(f->status, json_error_body(f->message));
    co_return;
  }
  // Headers are out: tell the client in the stream, and end it without [DONE].
  std::string event = "data: " + json_error_body(f->message) + "\n\n";
  if (co_await ex.write_chunk(event)) co_return;
  co_await ex.end_stream();
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
  auto results = co_await fan_out(all_workers(), ex.thread_index(), std::move(method),
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
  auto results = co_await fan_out(all_workers(), ex.thread_index(), "GET", "/get_server_info", {});
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
    auto r = co_await call_worker(*w, ex.thread_index(), "GET", std::string(path), {});
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
  if (!cfg_.admin_api_key.empty()) {
    if (!bearer_ok(req, cfg_.admin_api_key))
      co_return co_await fail(http::status::unauthorized, "missing or wrong admin API key",
                              "WWW-Authenticate: Bearer\r\n");
  } else {
    // remote() is "ADDRESS:PORT" as Asio prints it (IPv6 without brackets), or "?".
    std::string peer = ex.remote();
    std::string addr = peer.substr(0, peer.rfind(':'));
    bool loopback = addr.rfind("127.", 0) == 0 || addr == "::1" || addr.rfind("::ffff:127.", 0) == 0;
    if (!loopback)
      co_return co_await fail(http::status::forbidden,
                              "/slow_down is an admin route: without --admin-api-key only loopback "
                              "clients may call it (this client is " + peer + ")");
  }

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

  const auto& pool = role == "prefill" ? prefill_ : decode_;
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
        co_return co_await fail(http::status::bad_request,
                                url + " is not a " + role + " worker of this pdlb (" + role +
                                    " workers: " + (known.empty() ? "none" : known) + ")");
      }
      if (std::find(targets.begin(), targets.end(), it->get()) == targets.end()) targets.push_back(it->get());
    }
  }
  if (targets.empty())
    co_return co_await fail(http::status::service_unavailable, "no " + role + " worker configured");

  std::string forward = nlohmann::json{{"forward_sleep_time", sleep}}.dump();
  auto results = co_await fan_out(targets, ex.thread_index(), "POST", "/slow_down", forward);
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

}  // namespace pdlb
