#include "pdlb/service.hpp"

#include "pdlb/logging.hpp"
#include "pdlb/fd_limit.hpp"
#include "pdlb/ready_file.hpp"

#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>


#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <latch>
#include <stdexcept>

namespace pdlb {

namespace {

// Logs what raise_fd_limit() did.
void log_fd_limit(const fd_limit_change& c) {
  if (c.failed)
    spdlog::warn("could not raise file descriptor limit above {} (try: ulimit -n 65536)", c.before);
  else if (c.after > c.before)
    spdlog::info("raised file descriptor limit from {} to {}", c.before, c.after);
  else
    spdlog::info("file descriptor limit: {}", c.after);
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string shown_host(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

// Settings the service applies itself on a reload, and those only a restart can change.
void diff_service_settings(const config& now, const config& next, reload_report& r) {
  auto check = [&](bool changed, const char* name, bool live) {
    if (changed) (live ? r.applied : r.needs_restart).emplace_back(name);
  };
  check(now.log_level != next.log_level, "log-level", true);
  check(now.log_format != next.log_format, "log-format", true);
  check(now.log_interval != next.log_interval, "log-interval", true);
  check(now.shutdown_grace != next.shutdown_grace, "shutdown-grace", true);
  check(now.host != next.host, "host", false);
  check(now.port != next.port, "port", false);
  check(now.threads != next.threads, "threads", false);
  check(now.metrics_port != next.metrics_port, "metrics-port", false);
  check(now.max_body_size != next.max_body_size, "max-body-size", true);
  check(now.client_header_timeout != next.client_header_timeout, "client-header-timeout", true);
  check(now.client_body_timeout != next.client_body_timeout, "client-body-timeout", true);
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

server_options server_options_for(const config& cfg) {
  server_options so;
  so.host = cfg.host;
  so.port = cfg.port;
  so.threads = cfg.threads;
  so.body_limit = cfg.max_body_size;
  so.header_timeout = cfg.client_header_timeout;
  so.body_idle_timeout = cfg.client_body_timeout;
  so.write_timeout = cfg.timeout;
  so.name = "pdlb";
  return so;
}

service::service(config cfg, config_loader reload)
    : cfg_(std::move(cfg)),
      loader_(std::move(reload)),
      notifier_(systemd_notifier::from_environment()),
      prune_period_(std::max<std::chrono::milliseconds>(cfg_.upstream_idle_timeout / 2, std::chrono::milliseconds(100))) {
  lb_ = std::make_unique<load_balancer>(cfg_);
  server_ = std::make_unique<http_server>(server_options_for(cfg_),
                                          [lb = lb_.get()](exchange& ex) { return lb->handle(ex); });
  lb_->watch_threads(*server_);  // /metrics sums the threads' counters
}

service::~service() {
  if (metrics_thread_.joinable()) {
    // start() ran without run() (or run() did not get to stop it): stop the listener here.
    auto* m = metrics_server_.get();
    m->shutdown(std::chrono::milliseconds(0), [m] { m->release(); });
    metrics_thread_.join();
  }
}

std::uint16_t service::port() const { return server_->port(); }

std::optional<std::uint16_t> service::metrics_port() const {
  if (!metrics_server_) return std::nullopt;
  return metrics_server_->port();
}

void service::start_metrics_listener() {
  server_options so;
  so.host = cfg_.host;
  so.port = static_cast<std::uint16_t>(cfg_.metrics_port);
  so.threads = 1;
  so.header_limit = 16 * 1024;
  so.body_limit = 0;  // a scrape has no body
  so.name = "pdlb metrics";
  auto handler = [lb = lb_.get()](exchange& ex) -> net::awaitable<void> {
    const std::string_view target = ex.req().target();
    const std::string_view path = target.substr(0, target.find('?'));
    if (path != "/metrics") {
      co_await ex.respond(http::status::not_found,
                          json_error_body("not found: this port serves GET /metrics only"));
    } else if (ex.req().method() != http::verb::get && ex.req().method() != http::verb::head) {
      co_await ex.respond(http::status::method_not_allowed, json_error_body("method not allowed: use GET"),
                          "application/json", "Allow: GET\r\n");
    } else {
      const std::string text = lb->metrics_text();
      co_await ex.respond(http::status::ok, text, "text/plain; version=0.0.4; charset=utf-8");
    }
  };
  metrics_server_ = std::make_unique<http_server>(so, handler);
  try {
    metrics_server_->listen();
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot listen on " + cfg_.host + ":" + std::to_string(cfg_.metrics_port) +
                             " (--metrics-port): " + e.what());
  }
  metrics_thread_ = std::thread([m = metrics_server_.get()] { m->run(); });
}

void service::warn_about(const config& cfg) const {
  if (cfg.rust_lb) spdlog::warn("--rust-lb has no effect: pdlb is already native code");
  if (cfg.prefill.empty()) spdlog::warn("no --prefill worker: generate requests will get 503");
  if (cfg.decode.empty()) spdlog::warn("no --decode worker: generate requests will get 503");
  if (!is_loopback(cfg.host) && (cfg.api_key.empty() || cfg.admin_api_key.empty()))
    spdlog::warn("listening on {} without {}: anyone who can reach this port can use it", cfg.host,
                 cfg.api_key.empty() && cfg.admin_api_key.empty() ? "--api-key and --admin-api-key"
                 : cfg.api_key.empty()                            ? "--api-key"
                                                                  : "--admin-api-key");
}

void service::start() {
  warn_about(cfg_);
  log_fd_limit(raise_fd_limit());
  try {
    server_->listen();
  } catch (const std::exception& e) {  // Asio throws boost::system::system_error, not std's
    throw std::runtime_error("cannot listen on " + cfg_.host + ":" + std::to_string(cfg_.port) + ": " + e.what());
  }
  for (const auto& p : cfg_.prefill)
    spdlog::info("prefill worker {} (bootstrap port {})", p.url.url,
                 p.bootstrap_port ? std::to_string(*p.bootstrap_port) : "none");
  for (const auto& d : cfg_.decode) spdlog::info("decode worker {}", d.url);
  if (cfg_.metrics_port >= 0) start_metrics_listener();

  auto& ioc = server_->context(0);
  lb_->start_background(ioc);  // health checks, /get_load polls, DNS discovery (as configured)
  status_timer_ = std::make_unique<net::steady_timer>(ioc);
  last_status_ = std::chrono::steady_clock::now();
  net::post(ioc, [this] { schedule_status_log(); });
  // Each thread prunes its own idle upstream connections now and then.
  for (std::size_t i = 0; i < server_->thread_count(); ++i) {
    prune_timers_.push_back(std::make_unique<net::steady_timer>(server_->context(i)));
    net::post(server_->context(i), [this, i] { schedule_prune(i); });
  }
  if (notifier_.watchdog_timeout().count() > 0) {
    watchdog_timer_ = std::make_unique<net::steady_timer>(ioc);
    watchdog_seen_ = std::make_unique<std::atomic<std::uint64_t>[]>(server_->thread_count());
    net::post(ioc, [this] { schedule_watchdog(); });
  }
  signals_ = std::make_unique<net::signal_set>(ioc, SIGINT, SIGTERM, SIGHUP);
  wait_signal();
  announce_ready();
}

// The one place where readiness is announced: the port is bound and accepting, the timers and
// signal handlers are in place. Anything else that tells the world "pdlb is up" belongs here too.
void service::announce_ready() {
  // Signals are handled by now, so whoever reads the ready file or the listening line may send
  // SIGTERM at once and get a clean shutdown.
  if (!cfg_.ready_file.empty()) write_ready_file(cfg_.ready_file, {cfg_.host, server_->port(), std::nullopt, metrics_port()});
  if (metrics_server_)
    spdlog::info("metrics on http://{}:{}/metrics", shown_host(cfg_.host), metrics_server_->port());
  spdlog::info("pdlb {} listening on http://{}:{} (policy {}, {} thread(s))", PDLB_VERSION, shown_host(cfg_.host),
               server_->port(), to_string(cfg_.policy), server_->thread_count());
  if (auto ec = notifier_.notify("READY=1\nSTATUS=" + status_text()))
    spdlog::warn("systemd notification failed: {}", ec.message());
}

std::string service::status_text() const {
  if (stopping_) return "draining: " + std::to_string(server_->in_flight()) + " request(s) in flight";
  const auto workers = lb_->registry().snapshot();
  std::string s = "serving on " + shown_host(cfg_.host) + ":" + std::to_string(server_->port()) + " with " +
                  std::to_string(workers->prefill.size()) + " prefill and " +
                  std::to_string(workers->decode.size()) + " decode worker(s), " +
                  std::to_string(lb_->counters().in_flight.load(std::memory_order_relaxed)) +
                  " request(s) in flight";
  if (!reload_note_.empty()) s += "; " + reload_note_;
  // One line: STATUS= is a single line in systemd's protocol.
  for (auto& c : s)
    if (c == '\n') c = ' ';
  return s;
}

void service::schedule_status_log() {
  if (cfg_.log_interval <= 0 || stopping_) return;
  status_timer_->expires_after(std::chrono::seconds(cfg_.log_interval));
  status_timer_->async_wait([this](error_code ec) {
    if (ec) return;
    auto now = std::chrono::steady_clock::now();
    double secs = std::chrono::duration<double>(now - last_status_).count();
    last_status_ = now;
    spdlog::info("{}", lb_->status_line(secs));
    notifier_.notify("STATUS=" + status_text());
    schedule_status_log();
  });
}

void service::schedule_prune(std::size_t thread) {
  auto& t = *prune_timers_[thread];
  t.expires_after(prune_period_);
  t.async_wait([this, thread](error_code ec) {
    if (ec) return;
    server_->thread_ctx(thread).pools().prune();
    if (thread == 0) lb_->sweep();  // drained workers leave the list
    schedule_prune(thread);
  });
}

// Every half watchdog timeout (systemd's advice), thread 0 pings if every I/O thread ran the
// previous round's post, then starts the next round. A blocked event loop, thread 0's included,
// stops the pings, and systemd restarts pdlb.
void service::schedule_watchdog() {
  bool all_alive = true;
  for (std::size_t i = 0; i < server_->thread_count(); ++i)
    all_alive = all_alive && watchdog_seen_[i].load(std::memory_order_acquire) == watchdog_round_;
  if (all_alive) {
    if (auto ec = notifier_.notify("WATCHDOG=1")) spdlog::warn("systemd watchdog ping failed: {}", ec.message());
  } else if (!watchdog_missed_) {
    spdlog::warn("watchdog: an I/O thread did not answer within {} ms; not pinging systemd",
                 std::chrono::duration_cast<std::chrono::milliseconds>(notifier_.watchdog_timeout() / 2).count());
  }
  watchdog_missed_ = !all_alive;  // one warning per stall, not one per tick
  const std::uint64_t round = ++watchdog_round_;
  for (std::size_t i = 0; i < server_->thread_count(); ++i)
    net::post(server_->context(i), [this, i, round] { watchdog_seen_[i].store(round, std::memory_order_release); });
  watchdog_timer_->expires_after(notifier_.watchdog_timeout() / 2);
  watchdog_timer_->async_wait([this](error_code ec) {
    if (!ec) schedule_watchdog();
  });
}

void service::wait_signal() {
  signals_->async_wait([this](error_code ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      spdlog::info("SIGHUP: reloading the configuration");
      apply_reload();
    } else if (stopping_) {
      spdlog::warn("second signal: exiting now");
      std::fflush(nullptr);
      std::_Exit(1);
    } else {
      spdlog::info("signal {}: draining", sig);
      begin_drain();
    }
    wait_signal();
  });
}

int service::run() {
  server_->run();
  if (metrics_thread_.joinable()) metrics_thread_.join();  // stopped by finish_drain
  return 0;
}

void service::stop() {
  net::post(server_->context(0), [this] { begin_drain(); });
}

void service::begin_drain() {
  if (stopping_) return;
  stopping_ = true;
  if (status_timer_) status_timer_->cancel();
  notifier_.notify("STOPPING=1\nSTATUS=" + status_text());
  spdlog::info("no longer accepting; waiting up to {} ms for {} request(s) in flight", cfg_.shutdown_grace.count(),
               server_->in_flight());
  server_->shutdown(cfg_.shutdown_grace, [this] { finish_drain(); });
}

void service::finish_drain() {
  lb_->stop_background();
  if (watchdog_timer_) watchdog_timer_->cancel();
  if (signals_) signals_->cancel();
  for (std::size_t i = 0; i < server_->thread_count(); ++i)
    net::post(server_->context(i), [this, i] {
      if (i < prune_timers_.size()) prune_timers_[i]->cancel();
      server_->thread_ctx(i).pools().close_all();
    });
  server_->release();
  if (metrics_server_) {
    auto* m = metrics_server_.get();
    m->shutdown(std::chrono::milliseconds(0), [m] { m->release(); });
  }
  spdlog::info("all requests finished; exiting");
}

void service::reload(std::function<void(const reload_report&)> done) {
  net::post(server_->context(0), [this, done = std::move(done)] {
    auto report = apply_reload();
    if (done) done(report);
  });
}

// systemd's reload protocol: RELOADING=1 with the time, then READY=1 once the new configuration is
// in force, or the old one is still (a refused file), with the outcome as STATUS=.
reload_report service::apply_reload() {
  notifier_.notify(systemd_notifier::reloading_message());
  reload_report report;
  if (stopping_) {
    report.error = "draining";
  } else if (!loader_) {
    report.error = "no way to read the configuration again";
  } else {
    cli_result next = loader_();
    if (next.what == cli_result::action::exit) {
      report.error = next.message;
      while (!report.error.empty() && report.error.back() == '\n') report.error.pop_back();
      if (report.error.rfind("pdlb: ", 0) == 0) report.error.erase(0, 6);
    } else {
      report = apply(next.cfg);
    }
  }
  // The outcome stays in STATUS= (systemctl status) until the next reload, not just one message.
  if (!report.ok) {
    spdlog::error("reload refused, the previous configuration stays: {}", report.error);
    reload_note_ = "last reload failed, previous configuration in force: " + report.error;
  } else {
    spdlog::info("reload: {}", report.applied.empty() ? "nothing to change" : "applied " + joined(report.applied));
    if (!report.needs_restart.empty())
      spdlog::warn("reload: changed but only applied on a restart: {}", joined(report.needs_restart));
    reload_note_ = report.needs_restart.empty() ? "" : "restart to apply " + joined(report.needs_restart);
  }
  notifier_.notify("READY=1\nSTATUS=" + status_text());
  return report;
}

reload_report service::apply(const config& next) {
  reload_report report;
  report.ok = true;
  diff_service_settings(cfg_, next, report);
  // The load balancer is read by every I/O thread: it takes the new settings while they are parked.
  with_io_threads_parked([&] {
    server_->set_request_limits(next.max_body_size, next.client_header_timeout, next.client_body_timeout,
                                next.timeout);
    auto lb_report = lb_->reconfigure(next);
    report.applied.insert(report.applied.end(), lb_report.applied.begin(), lb_report.applied.end());
    report.needs_restart.insert(report.needs_restart.end(), lb_report.needs_restart.begin(),
                                lb_report.needs_restart.end());
  });
  if (next.log_level != cfg_.log_level) spdlog::set_level(spdlog::level::from_str(next.log_level));
  if (next.log_format != cfg_.log_format) set_log_format(next.log_format);
  const bool restart_status_log = next.log_interval != cfg_.log_interval;
  // Only what is in force changes; settings that need a restart keep their running values.
  cfg_.log_level = next.log_level;
  cfg_.log_format = next.log_format;
  cfg_.log_interval = next.log_interval;
  cfg_.shutdown_grace = next.shutdown_grace;
  cfg_.max_body_size = next.max_body_size;
  cfg_.client_header_timeout = next.client_header_timeout;
  cfg_.client_body_timeout = next.client_body_timeout;
  if (restart_status_log && status_timer_) {
    status_timer_->cancel();
    schedule_status_log();
  }
  return report;
}

// Runs `fn` on thread 0 while every other I/O thread waits in a posted handler, so that `fn` may
// change what their handlers read without a data race. Handlers are short (no blocking calls), so
// the threads arrive within microseconds; requests in flight just resume afterwards.
void service::with_io_threads_parked(const std::function<void()>& fn) {
  const std::size_t others = server_->thread_count() - 1;
  if (others == 0) {
    fn();
    return;
  }
  struct rendezvous {
    explicit rendezvous(std::size_t n) : parked(static_cast<std::ptrdiff_t>(n)), go(resume.get_future().share()) {}
    std::latch parked;
    std::promise<void> resume;
    std::shared_future<void> go;
  };
  auto r = std::make_shared<rendezvous>(others);
  for (std::size_t i = 1; i <= others; ++i)
    net::post(server_->context(i), [r] {
      r->parked.count_down();
      r->go.wait();
    });
  r->parked.wait();
  // The threads are let go even if fn throws.
  struct let_go {
    rendezvous& r;
    ~let_go() { r.resume.set_value(); }
  } guard{*r};
  fn();
}

}  // namespace pdlb
