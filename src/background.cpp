#include "pdlb/background.hpp"

#include "pdlb/dns.hpp"
#include "pdlb/proxy.hpp"
#include "pdlb/upstream.hpp"
#include "pdlb/worker_query.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace pdlb {

namespace {

bool is_2xx(unsigned status) { return status >= 200 && status < 300; }

// The workers to query: every listed one but those leaving.
std::vector<worker*> live_workers(const worker_set& set) {
  std::vector<worker*> out;
  for (const auto* pool : {&set.prefill, &set.decode})
    for (const auto& w : *pool)
      if (!w->draining.load(std::memory_order_relaxed)) out.push_back(w.get());
  return out;
}

// Closes the tasks' idle connections when a task ends. An idle pooled connection keeps its
// response-timeout timer armed (see lazy_deadline), which would keep the io_context, and so pdlb's
// shutdown, waiting until it fires.
struct close_idle_on_exit {
  thread_context& ctx;
  ~close_idle_on_exit() { ctx.pools().close_all(); }
};

// Waits until `until`; false if the wait was cancelled (the task is stopping).
net::awaitable<bool> wait_until(steady_time until) {
  net::steady_timer timer(co_await net::this_coro::executor, until);
  auto [ec] = co_await timer.async_wait(net::as_tuple(net::use_awaitable));
  co_return !ec;
}

}  // namespace

std::optional<std::int64_t> parse_get_load(std::string_view body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  auto reqs = [](const nlohmann::json& rank) -> std::optional<std::int64_t> {
    if (!rank.is_object()) return std::nullopt;
    auto it = rank.find("num_reqs");
    if (it == rank.end() || !it->is_number_integer() || it->get<std::int64_t>() < 0) return std::nullopt;
    return it->get<std::int64_t>();
  };
  if (j.is_object()) return reqs(j);
  if (!j.is_array() || j.empty()) return std::nullopt;
  std::int64_t sum = 0;
  for (const auto& rank : j) {
    auto n = reqs(rank);
    if (!n) return std::nullopt;
    sum += *n;
  }
  return sum;
}

background_tasks::background_tasks(const config& cfg, worker_registry& registry, net::io_context& ioc)
    : cfg_(cfg), registry_(registry), ioc_(ioc), ctx_(0) {
  if (cfg_.health_check_interval.count() > 0) {
    spawn(health_checks(), "health checks");
    spdlog::info("active health checks: GET {} every {} ms ({} ms timeout, {} failures eject, {} passes restore)",
                 cfg_.health_check_path, cfg_.health_check_interval.count(), cfg_.health_check_timeout.count(),
                 cfg_.health_check_failures, cfg_.health_check_passes);
  }
  if (cfg_.load == load_source::worker) {
    spawn(load_polls(), "load polls");
    spdlog::info("load source: worker (GET /get_load every {} ms)", cfg_.load_poll_interval.count());
  }
  if (!cfg_.dns.empty()) discovery_ = std::make_unique<dns_discovery>(cfg_, registry_);
}

background_tasks::~background_tasks() = default;

void background_tasks::spawn(net::awaitable<void> task, const char* name) {
  auto& signal = *signals_.emplace_back(std::make_unique<net::cancellation_signal>());
  net::co_spawn(ioc_, std::move(task), net::bind_cancellation_slot(signal.slot(), [name](std::exception_ptr e) {
                  if (!e) return;
                  try {
                    std::rethrow_exception(e);
                  } catch (const boost::system::system_error& se) {
                    if (se.code() == net::error::operation_aborted) return;  // stopped
                    spdlog::error("{} ended: {}", name, se.what());
                  } catch (const std::exception& ex) {
                    spdlog::error("{} ended: {}", name, ex.what());
                  }
                }));
}

void background_tasks::stop() {
  if (discovery_) discovery_->stop();
  // Cancellation signals belong to the io_context's thread.
  net::post(ioc_, [this] {
    for (auto& s : signals_) s->emit(net::cancellation_type::terminal);
  });
}

net::awaitable<void> background_tasks::health_checks() {
  const check_policy policy{cfg_.health_check_failures, cfg_.health_check_passes};
  close_idle_on_exit guard{ctx_};
  for (;;) {
    const auto round = std::chrono::steady_clock::now();
    const auto set = registry_.snapshot();  // keeps the workers alive for the round
    const auto ws = live_workers(*set);
    auto results = co_await query_workers(ws, ctx_, "GET", cfg_.health_check_path, {}, cfg_.health_check_timeout);
    for (std::size_t i = 0; i < ws.size(); ++i) {
      const auto& r = results[i];
      const bool passed = r.error.empty() && is_2xx(r.status);
      switch (ws[i]->record_check(passed, policy)) {
        case check_change::ejected:
          spdlog::warn("{} worker {} ejected: {} health checks in a row failed (last: {}); back after {} passing checks",
                       to_string(ws[i]->role), ws[i]->url(), policy.failures,
                       r.error.empty() ? "answered " + std::to_string(r.status) : r.error, policy.passes);
          break;
        case check_change::restored:
          spdlog::info("{} worker {} restored: {} health checks in a row passed", to_string(ws[i]->role),
                       ws[i]->url(), policy.passes);
          break;
        case check_change::none:
          break;
      }
    }
    ctx_.pools().prune();
    if (!co_await wait_until(round + cfg_.health_check_interval)) co_return;
  }
}

net::awaitable<void> background_tasks::load_polls() {
  // A load older than the interval is stale anyway; a floor of 1 s spares a busy worker from
  // flapping between its own and no load.
  const auto limit = std::max<std::chrono::milliseconds>(cfg_.load_poll_interval, std::chrono::seconds(1));
  close_idle_on_exit guard{ctx_};
  for (;;) {
    const auto round = std::chrono::steady_clock::now();
    const auto set = registry_.snapshot();
    const auto ws = live_workers(*set);
    auto results = co_await query_workers(ws, ctx_, "GET", "/get_load", {}, limit);
    for (std::size_t i = 0; i < ws.size(); ++i) {
      const auto& r = results[i];
      std::optional<std::int64_t> load;
      if (r.error.empty() && r.status == 200) load = parse_get_load(r.body);
      // A worker that does not answer, or not in SGLang's shape, keeps its local count only.
      const auto before = ws[i]->reported_load.exchange(load.value_or(0), std::memory_order_relaxed);
      if (!load && before != 0)
        spdlog::warn("{} worker {}: no load from /get_load ({}); using the local count",
                     to_string(ws[i]->role), ws[i]->url(),
                     !r.error.empty() ? r.error
                     : r.status != 200 ? "answered " + std::to_string(r.status)
                                       : "unexpected answer: " + r.body.substr(0, 200));
    }
    ctx_.pools().prune();
    if (!co_await wait_until(round + cfg_.load_poll_interval)) co_return;
  }
}

void load_balancer::start_background(net::io_context& ioc) {
  if (!background_) background_ = std::make_unique<background_tasks>(cfg_, registry_, ioc);
}

void load_balancer::stop_background() {
  if (background_) background_->stop();
}

}  // namespace pdlb
