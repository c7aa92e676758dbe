// The load balancer proper: routes, the prefill/decode fan-out, admin routes, counters.
#pragma once

#include "pdlb/background.hpp"
#include "pdlb/config.hpp"
#include "pdlb/http_server.hpp"
#include "pdlb/pd_request.hpp"
#include "pdlb/worker.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace pdlb {

/// Process-wide counters (all threads).
struct lb_counters {
  std::atomic<std::uint64_t> requests{0};   ///< Requests received (every route).
  std::atomic<std::uint64_t> errors{0};     ///< Answered with a status >= 400, or cut short.
  std::atomic<std::int64_t> in_flight{0};   ///< Requests being handled now.
  std::atomic<std::uint64_t> client_aborts{0};  ///< Clients that left before their answer.
  std::atomic<std::uint64_t> retries{0};    ///< Attempts run again on another pair.
};

/// What load_balancer::reconfigure took, and what only a restart can change.
struct reconfigure_result {
  std::vector<std::string> applied;        ///< Settings (long option names) now in force.
  std::vector<std::string> needs_restart;  ///< Settings that changed but were left as they are.
};

/// The timeouts of the calls to workers that a configuration asks for.
upstream_options upstream_options_of(const config& cfg);

class load_balancer {
 public:
  explicit load_balancer(const config& cfg);
  ~load_balancer();

  /// The server's request handler.
  net::awaitable<void> handle(exchange& ex);

  /// Applies `next` to requests that start from now on; requests in flight keep what they took.
  /// Call it only while no other thread runs this load balancer (service parks its I/O threads).
  /// Defined in src/reconfigure.cpp.
  reconfigure_result reconfigure(const config& next);

  /// One status line for the periodic log: rates since the previous call, in-flight counts.
  std::string status_line(double seconds_since_last);
  /// Starts the background tasks the configuration asks for (active health checks, /get_load
  /// polls, DNS discovery), the coroutines on `ioc` (thread 0's context). Once only.
  void start_background(net::io_context& ioc);
  /// Stops them (from any thread, without waiting): `ioc` then runs out of their work.
  void stop_background();
  /// Housekeeping, now and then: drained workers leave the list.
  void sweep() { registry_.sweep(); }

  const lb_counters& counters() const { return counters_; }
  /// Counters and per-worker load as JSON (served at GET /pdlb/stats).
  std::string stats_json() const;
  /// The workers.
  worker_registry& registry() { return registry_; }

  /// The server's threads, whose per-thread metrics a scrape sums; call it once, before run().
  void watch_threads(http_server& server);
  /// Every metric in the Prometheus text format 0.0.4 (served at GET /metrics).
  std::string metrics_text() const;

 private:
  // The parts of metrics_text(): requests (summed over threads), workers, their connections.
  void append_request_metrics(pdlb::metrics_text& out) const;
  void append_worker_metrics(pdlb::metrics_text& out) const;
  void append_connection_metrics(pdlb::metrics_text& out) const;
  friend class pd_request;
  net::awaitable<void> dispatch(exchange& ex, request_record& record);
  /// A worker of `role` for a new request (see pick_worker_for); logs when a role enters or
  /// leaves panic mode.
  std::shared_ptr<worker> pick(const worker_set& set, worker_role role, std::mt19937_64& rng,
                               const std::vector<const worker*>& avoid);
  /// Records how a worker did on a request (passive failure detection).
  void record_failure(worker& w, failure_kind kind, std::string_view what);
  net::awaitable<void> handle_fan_out(exchange& ex, std::string_view path, bool get);
  /// Calls every worker; answers 200 if all succeed, else `failure_status` naming the failures.
  net::awaitable<void> fan_out_and_answer(exchange& ex, std::string method, std::string path,
                                          std::string_view body, http::status failure_status,
                                          std::string failure_prefix);
  net::awaitable<void> handle_health_generate(exchange& ex);
  net::awaitable<void> handle_server_info(exchange& ex);
  net::awaitable<void> handle_first_prefill(exchange& ex, std::string_view path);
  net::awaitable<void> handle_workers(exchange& ex, std::string_view path);
  net::awaitable<void> handle_readiness(exchange& ex);
  /// GET /get_loads (/v1/loads): each worker's in-flight count and its own /get_load.
  net::awaitable<void> handle_loads(exchange& ex);
  /// POST /slow_down: SGLang's forward_sleep_time to every decode (or prefill) worker at once.
  net::awaitable<void> handle_slow_down(exchange& ex);

  config cfg_;
  health_policy health_;
  worker_registry registry_;
  std::atomic<std::size_t> rr_prefill_{0};
  std::atomic<std::size_t> rr_decode_{0};
  std::atomic<bool> panic_prefill_{false};
  std::atomic<bool> panic_decode_{false};
  lb_counters counters_;
  /// Writes the access log line of a request that ended (only when --access-log is set).
  void log_access(exchange& ex, const request_record& record, std::chrono::steady_clock::time_point start,
                  bool finished);

  std::shared_ptr<spdlog::logger> access_log_;  // null: off
  std::vector<const thread_context*> threads_;  // set once by watch_threads, before any request
  std::uint64_t last_requests_ = 0;
  std::uint64_t last_errors_ = 0;
  std::unique_ptr<background_tasks> background_;  // after registry_: destroyed before it
};

}  // namespace pdlb
