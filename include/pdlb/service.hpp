// pdlb as an object: start-up, signals, drain, the periodic timers, systemd notification and live
// reload around one load_balancer and its http_server. main() parses options and runs one; tests
// run one in-process.
#pragma once

#include "pdlb/config.hpp"
#include "pdlb/http_server.hpp"
#include "pdlb/proxy.hpp"
#include "pdlb/systemd_notify.hpp"

#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace pdlb {

/// Produces the configuration to apply on a reload: the same command line, the file read again.
using config_loader = std::function<cli_result()>;

/// What a reload did.
struct reload_report {
  bool ok = false;                         ///< False: the new configuration was refused, nothing changed.
  std::string error;                       ///< Why it was refused.
  std::vector<std::string> applied;        ///< Settings that changed and are in force now.
  std::vector<std::string> needs_restart;  ///< Settings that changed but only take effect on a restart.
};

/// The http_server settings that follow from a configuration.
server_options server_options_for(const config& cfg);

class service {
 public:
  /// Builds the load balancer and its server; nothing listens yet. `reload` gives the configuration
  /// to apply on SIGHUP (without one, a reload keeps what runs). systemd notification follows the
  /// environment ($NOTIFY_SOCKET, $WATCHDOG_USEC, $WATCHDOG_PID).
  explicit service(config cfg, config_loader reload = {});
  ~service();
  service(const service&) = delete;
  service& operator=(const service&) = delete;

  /// Raises the file descriptor limit, listens, starts the timers and the signal handlers
  /// (SIGTERM/SIGINT drain, a second one exits at once, SIGHUP reloads) and announces readiness.
  /// Throws std::runtime_error ("cannot listen on HOST:PORT: ...") if it cannot listen.
  void start();
  /// Runs the I/O threads (the calling thread is thread 0) until a drain has finished; returns the
  /// process exit code (0).
  int run();

  /// Starts a graceful drain, as SIGTERM does. Callable from any thread; later calls do nothing.
  void stop();
  /// Reads the configuration again and applies it, as SIGHUP does; `done` gets the outcome (on
  /// thread 0). Callable from any thread once started.
  void reload(std::function<void(const reload_report&)> done = {});

  /// The bound port (after start()).
  std::uint16_t port() const;
  /// The metrics listener's bound port, if --metrics-port is on (after start()).
  std::optional<std::uint16_t> metrics_port() const;
  /// The HTTP server (its threads' io_contexts, connection counts).
  http_server& server() { return *server_; }
  /// The load balancer (counters, workers).
  load_balancer& balancer() { return *lb_; }

 private:
  void warn_about(const config& cfg) const;
  void announce_ready();
  std::string status_text() const;
  void schedule_status_log();
  void schedule_prune(std::size_t thread);
  void schedule_watchdog();
  void wait_signal();
  void begin_drain();
  void finish_drain();
  reload_report apply_reload();
  reload_report apply(const config& next);
  void with_io_threads_parked(const std::function<void()>& fn);
  void start_metrics_listener();

  config cfg_;  // the configuration in force; read and written on thread 0 only
  config_loader loader_;
  systemd_notifier notifier_;
  std::chrono::milliseconds prune_period_;
  // Declared before lb_ so that it is destroyed after it: upstream sockets live on its io_contexts.
  std::unique_ptr<http_server> server_;
  std::unique_ptr<load_balancer> lb_;
  std::unique_ptr<net::steady_timer> status_timer_;
  std::unique_ptr<net::steady_timer> watchdog_timer_;
  std::vector<std::unique_ptr<net::steady_timer>> prune_timers_;
  std::unique_ptr<net::signal_set> signals_;
  // --metrics-port: a one-thread server of its own that answers GET /metrics only, so that scrapes
  // neither queue behind nor count as client traffic. It reads the counters the way a scrape on
  // the main port does (summed across threads) and touches no per-thread state.
  std::unique_ptr<http_server> metrics_server_;
  std::thread metrics_thread_;
  std::chrono::steady_clock::time_point last_status_;
  bool stopping_ = false;     // thread 0 only
  std::string reload_note_;  // the last reload's outcome for STATUS=, if worth telling; thread 0 only
  // Watchdog rounds: thread 0 starts round N by posting to every I/O thread; a thread that runs the
  // post records N. The next ping goes out only if every thread recorded the previous round.
  std::uint64_t watchdog_round_ = 0;
  bool watchdog_missed_ = false;
  std::unique_ptr<std::atomic<std::uint64_t>[]> watchdog_seen_;
};

}  // namespace pdlb
