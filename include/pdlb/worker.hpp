// Workers, their health, and the registry that all threads read them from.
//
// Failure detection is passive: it watches the requests pdlb sends anyway and sends nothing of its
// own (the seed's decode test wants no traffic but its own). A refused connection ejects a worker at
// once (its process is gone); otherwise `max_fails` failures in a row eject it for `fail_timeout`,
// doubled for each ejection in a row up to 300 s, as Envoy's outlier detection does. When the time
// is up the worker takes requests again on probation: its next success restores it, its next
// failure ejects it again for twice as long.
//
// Active health checks (off by default) keep a second, separate verdict: `failures` failed checks
// in a row eject a worker until `passes` checks in a row pass, however long that takes. A worker
// takes requests only when neither verdict holds it. Neither ends the other: a passing /health
// does not prove that generate requests work (a worker can answer 503 to those and 200 to
// /health), and a served request does not prove that the checks pass. Both leave a worker usable
// in panic mode (see pick_worker_for).
#pragma once

#include "pdlb/config.hpp"
#include "pdlb/metrics.hpp"
#include "pdlb/upstream.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace pdlb {

enum class worker_role { prefill, decode };
std::string_view to_string(worker_role r);

/// What a worker is doing, as GET /workers shows it.
enum class worker_state { available, ejected, draining };
std::string_view to_string(worker_state s);

/// How a worker failed a request (what counts towards ejection; 4xx answers never do).
enum class failure_kind {
  refused,  ///< Connection refused: the process is gone. Ejects at once.
  connect,  ///< Connecting failed otherwise (unreachable, connect timeout).
  timeout,  ///< No answer (or no next piece of it) within --timeout.
  reset,    ///< The connection broke: reset, closed mid-answer, malformed answer.
  status,   ///< A 5xx answer.
  /// A 5xx answer reporting that the pair's KV hand-off failed (see reports_kv_handoff_failure).
  bootstrap,
};
/// Number of failure kinds (for per-kind counters).
inline constexpr std::size_t failure_kinds = 6;
std::string_view to_string(failure_kind k);

/// True if a worker's error answer says that the KV hand-off between the prefill and the decode
/// failed: SGLang aborts such a request with 500 and "Prefill transfer failed for request ...",
/// "Decode transfer failed for request ..." or "Decode handshake failed for request ...", most with
/// a KVTransferError (python/sglang/srt/disaggregation/prefill.py and decode.py).
bool reports_kv_handoff_failure(std::string_view body);

/// Active health check settings (--health-check-failures, --health-check-passes).
struct check_policy {
  unsigned failures = 3;  ///< Failed checks in a row that eject.
  unsigned passes = 2;    ///< Passing checks in a row that restore a worker the checks ejected.
};

/// What a health check's result did to a worker.
enum class check_change { none, ejected, restored };

/// Ejection settings (--max-fails, --fail-timeout).
struct health_policy {
  unsigned max_fails = 3;  ///< Failures in a row that eject; 0 turns passive ejection off.
  std::chrono::milliseconds fail_timeout{std::chrono::seconds(10)};  ///< First ejection's length.
  std::chrono::milliseconds max_ejection{std::chrono::seconds(300)};  ///< Longest ejection.
};

using steady_time = std::chrono::steady_clock::time_point;

/// One worker: where it is, its connections, and what pdlb saw of it. Shared by every thread; the
/// counters are atomics, so a worker is read and updated without a lock.
struct worker {
  /// `threads`: the number of server threads, each of which gets its own metrics slot.
  worker(worker_role role, std::optional<std::uint16_t> bootstrap_port, std::unique_ptr<upstream_host> host,
         std::size_t threads = 1);

  const worker_role role;
  const bool prefill;  ///< role == prefill.
  const std::optional<std::uint16_t> bootstrap_port;  ///< Prefill only; nullopt is sent as null.
  const std::unique_ptr<upstream_host> host;
  const std::string& url() const { return host->url().url; }

  std::atomic<std::int64_t> in_flight{0};   ///< Requests in flight on it through this pdlb.
  std::atomic<std::uint64_t> requests{0};   ///< Requests sent to it.
  std::atomic<std::uint64_t> failures{0};   ///< Requests it failed (any kind).
  std::atomic<std::uint64_t> ejections{0};  ///< Times it was ejected.
  std::atomic<bool> draining{false};        ///< Leaving: no new requests; gone once idle.
  /// Requests the worker itself reports (/get_load, --load-source worker); 0 when not polled or
  /// when it did not answer the last poll.
  std::atomic<std::int64_t> reported_load{0};

  /// What po2 compares: requests in flight through this pdlb plus what the worker reports.
  std::int64_t load() const {
    return in_flight.load(std::memory_order_relaxed) + reported_load.load(std::memory_order_relaxed);
  }
  /// Failures by kind (failure_kind's order); updated on the failure path only.
  std::array<std::atomic<std::uint64_t>, failure_kinds> failures_by_kind{};

  /// What one server thread measured of this worker; written by that thread only.
  struct alignas(64) thread_slot {
    /// Prefill: time to its answer's header. Decode: time to its first body byte (TTFT).
    local_histogram response;
  };
  /// Thread `i`'s slot (i < metric_threads()).
  thread_slot& slot(std::size_t i) { return slots_[i]; }
  const thread_slot& slot(std::size_t i) const { return slots_[i]; }
  std::size_t metric_threads() const { return threads_; }

  /// Its state at `now`.
  worker_state state(steady_time now) const;
  /// True if it may take a new request at `now` (not draining, not ejected).
  bool available(steady_time now) const { return state(now) == worker_state::available; }
  /// When its ejection ends (a past time if it is not ejected).
  steady_time ejected_until() const;

  /// A request it served (any answer but a 5xx): it is healthy.
  void record_success();
  /// A request it failed. Returns true if this failure ejected it.
  bool record_failure(failure_kind kind, const health_policy& policy, steady_time now);

  /// An active health check's result. Called by one task only (the health checker).
  check_change record_check(bool passed, const check_policy& policy);
  /// True while the active health checks hold it ejected.
  bool check_ejected() const { return check_ejected_.load(std::memory_order_relaxed); }
  /// True while a --fail-timeout ejection (passive detection) holds it.
  bool failure_ejected(steady_time now) const { return ejected_until() > now; }

 private:
  std::atomic<std::uint32_t> fails_in_a_row_{0};
  std::atomic<std::uint32_t> ejections_in_a_row_{0};  // reset by a success
  std::atomic<std::int64_t> ejected_until_{0};         // steady_clock ticks
  std::atomic<bool> check_ejected_{false};
  unsigned checks_failed_in_a_row_ = 0;  // the health checker's own: one task touches them
  unsigned checks_passed_in_a_row_ = 0;
  std::size_t threads_;
  std::unique_ptr<thread_slot[]> slots_;  // one per server thread, made when the worker is added
};

/// The workers at one moment. Immutable once published: a change publishes a new set.
struct worker_set {
  std::vector<std::shared_ptr<worker>> prefill;
  std::vector<std::shared_ptr<worker>> decode;
  const std::vector<std::shared_ptr<worker>>& of(worker_role r) const {
    return r == worker_role::prefill ? prefill : decode;
  }
};

/// The live list of workers. Readers (every request) take the current set with one atomic load and
/// no lock; changes (admin routes, discovery, a drained worker leaving) are serialized by a mutex
/// and publish a new set.
class worker_registry {
 public:
  /// How new workers connect; `threads`: server threads, for each worker's metric slots.
  worker_registry(upstream_options opts, std::size_t per_host_limit, std::size_t global_limit,
                  std::size_t threads = 1);
  ~worker_registry();

  /// The current set.
  std::shared_ptr<const worker_set> snapshot() const { return current_.load(std::memory_order_acquire); }

  /// Adds a worker. Fails (nullptr, `error` set) if its URL is already listed in that role and not
  /// draining.
  std::shared_ptr<worker> add(worker_role role, const worker_url& url,
                              std::optional<std::uint16_t> bootstrap_port, std::string& error);
  /// Starts draining the worker(s) with this URL (normalised as parse_worker_url does; both roles if
  /// one server is both): no new request, and it leaves the list once its last request ended.
  /// False if it is not listed.
  bool drain(std::string_view url);
  /// Removes drained workers that have nothing in flight; call it now and then.
  void sweep();
  /// The connector limit shared by every worker's connections.
  conn_limiter& global_limit() { return *global_limit_; }
  /// New timeouts and connector limits for every worker, listed or added later (a reload; only
  /// while the I/O threads are parked, see upstream_host::reconfigure).
  void reconfigure(const upstream_options& opts, std::size_t per_host_limit, std::size_t global_limit);
  /// Finds a listed worker by URL (draining ones included).
  std::shared_ptr<worker> find(std::string_view url) const;

 private:
  void publish(std::shared_ptr<const worker_set> next);

  upstream_options opts_;
  std::size_t per_host_limit_;
  std::size_t threads_;
  std::shared_ptr<conn_limiter> global_limit_;
  std::mutex change_mutex_;
  std::atomic<std::shared_ptr<const worker_set>> current_;
};

/// Picks a worker of `pool` for a new request: among the available ones not in `avoid` (workers
/// this request already failed on); failing that, the available ones; failing that (every worker
/// ejected: "panic"), any that is not draining, so that pdlb keeps trying rather than refusing all
/// traffic. nullptr when no worker is left but draining ones. `panic` tells whether it panicked.
std::shared_ptr<worker> pick_worker_for(const std::vector<std::shared_ptr<worker>>& pool,
                                        policy_kind policy, std::atomic<std::size_t>& rr,
                                        std::mt19937_64& rng, steady_time now,
                                        const std::vector<const worker*>& avoid, bool& panic);

}  // namespace pdlb
