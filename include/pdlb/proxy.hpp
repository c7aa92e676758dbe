// The load balancer proper: routes, the prefill/decode fan-out, admin fan-outs, counters.
#pragma once

#include "pdlb/config.hpp"
#include "pdlb/http_server.hpp"
#include "pdlb/upstream.hpp"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pdlb {

/// One worker: its connection pool and what pdlb routes to it.
struct worker {
  std::unique_ptr<upstream_host> host;
  bool prefill = false;
  std::optional<std::uint16_t> bootstrap_port;  ///< Prefill only.
  std::atomic<std::int64_t> in_flight{0};       ///< Requests in flight through this pdlb.
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> failures{0};
};

/// Process-wide counters (all threads).
struct lb_counters {
  std::atomic<std::uint64_t> requests{0};   ///< Requests received (every route).
  std::atomic<std::uint64_t> errors{0};     ///< Answered with a status >= 400, or cut short.
  std::atomic<std::int64_t> in_flight{0};   ///< Requests being handled now.
  std::atomic<std::uint64_t> client_aborts{0};  ///< Clients that left before their answer.
};

/// What load_balancer::reconfigure took, and what only a restart can change.
struct reconfigure_result {
  std::vector<std::string> applied;        ///< Settings (long option names) now in force.
  std::vector<std::string> needs_restart;  ///< Settings that changed but were left as they are.
};

class load_balancer {
 public:
  load_balancer(const config& cfg, std::size_t threads);
  ~load_balancer();

  /// The server's request handler.
  net::awaitable<void> handle(exchange& ex);

  /// Closes idle upstream connections of one thread (at shutdown); call it on that thread.
  void close_idle(std::size_t thread);
  /// Closes idle upstream connections past the idle timeout on one thread; call it on that thread.
  void prune_idle(std::size_t thread);

  /// Applies `next` to requests that start from now on; requests in flight keep what they took.
  /// Call it only while no other thread runs this load balancer (service parks its I/O threads).
  /// Defined in src/reconfigure.cpp.
  reconfigure_result reconfigure(const config& next);

  /// One status line for the periodic log: rates since the previous call, in-flight counts.
  std::string status_line(double seconds_since_last);

  const lb_counters& counters() const { return counters_; }
  /// Counters and per-worker load as JSON (served at GET /pdlb/stats).
  std::string stats_json() const;
  const std::vector<std::unique_ptr<worker>>& prefill_workers() const { return prefill_; }
  const std::vector<std::unique_ptr<worker>>& decode_workers() const { return decode_; }

 private:
  struct route;
  net::awaitable<void> dispatch(exchange& ex);
  net::awaitable<void> handle_pd(exchange& ex, std::string_view path, bool openai);
  net::awaitable<void> handle_fan_out(exchange& ex, std::string_view path, bool get);
  /// Calls every worker; answers 200 if all succeed, else `failure_status` naming the failures.
  net::awaitable<void> fan_out_and_answer(exchange& ex, std::string method, std::string path,
                                          std::string_view body, http::status failure_status,
                                          std::string failure_prefix);
  std::vector<worker*> all_workers() const;
  net::awaitable<void> handle_health_generate(exchange& ex);
  net::awaitable<void> handle_server_info(exchange& ex);
  net::awaitable<void> handle_first_prefill(exchange& ex, std::string_view path);

  config cfg_;
  std::shared_ptr<conn_limiter> global_limit_;
  std::vector<std::unique_ptr<worker>> prefill_;
  std::vector<std::unique_ptr<worker>> decode_;
  std::atomic<std::size_t> rr_prefill_{0};
  std::atomic<std::size_t> rr_decode_{0};
  lb_counters counters_;
  std::uint64_t last_requests_ = 0;
  std::uint64_t last_errors_ = 0;
};

}  // namespace pdlb
