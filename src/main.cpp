// pdlb: parses options and runs the server; everything else lives in the library.
#include "pdlb/config.hpp"
#include "pdlb/http_server.hpp"
#include "pdlb/proxy.hpp"
#include "pdlb/upstream.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <iostream>

namespace {

// As minilb does: many concurrent streams need many descriptors (two upstream sockets each).
void raise_fd_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  if (lim.rlim_cur >= lim.rlim_max) {
    spdlog::info("file descriptor limit: {}", lim.rlim_cur);
    return;
  }
  auto old = lim.rlim_cur;
  lim.rlim_cur = lim.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &lim) == 0)
    spdlog::info("raised file descriptor limit from {} to {}", old, lim.rlim_cur);
  else
    spdlog::warn("could not raise file descriptor limit above {} (try: ulimit -n 65536)", old);
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto cli = pdlb::parse_command_line(argc, argv);
  if (cli.what == pdlb::cli_result::action::exit) {
    (cli.exit_code == 0 ? std::cout : std::cerr) << cli.message;
    return cli.exit_code;
  }
  const pdlb::config& cfg = cli.cfg;
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [pdlb] [%l] %v");
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  std::signal(SIGPIPE, SIG_IGN);

  if (cfg.rust_lb) spdlog::warn("--rust-lb has no effect: pdlb is already native code");
  if (cfg.prefill.empty()) spdlog::warn("no --prefill worker: generate requests will get 503");
  if (cfg.decode.empty()) spdlog::warn("no --decode worker: generate requests will get 503");
  if (!is_loopback(cfg.host) && (cfg.api_key.empty() || cfg.admin_api_key.empty()))
    spdlog::warn("listening on {} without {}: anyone who can reach this port can use it", cfg.host,
                 cfg.api_key.empty() && cfg.admin_api_key.empty() ? "--api-key and --admin-api-key"
                 : cfg.api_key.empty()                            ? "--api-key"
                                                                  : "--admin-api-key");
  raise_fd_limit();

  pdlb::server_options so;
  so.host = cfg.host;
  so.port = cfg.port;
  so.threads = cfg.threads;
  so.body_limit = cfg.max_body_size;
  so.header_timeout = cfg.client_header_timeout;
  so.body_idle_timeout = cfg.client_body_timeout;
  so.write_timeout = cfg.timeout;
  so.name = "pdlb";

  auto lb = std::make_unique<pdlb::load_balancer>(cfg);
  pdlb::http_server server(so, [&lb](pdlb::exchange& ex) { return lb->handle(ex); });
  lb->watch_threads(server);  // /metrics sums the threads' counters
  try {
    server.listen();
  } catch (const std::exception& e) {
    spdlog::critical("cannot listen on {}:{}: {}", cfg.host, cfg.port, e.what());
    return 1;
  }
  for (const auto& p : cfg.prefill)
    spdlog::info("prefill worker {} (bootstrap port {})", p.url.url,
                 p.bootstrap_port ? std::to_string(*p.bootstrap_port) : "none");
  for (const auto& d : cfg.decode) spdlog::info("decode worker {}", d.url);
  std::string shown_host = cfg.host.find(':') != std::string::npos ? "[" + cfg.host + "]" : cfg.host;
  spdlog::info("pdlb {} listening on http://{}:{} (policy {}, {} thread(s))", PDLB_VERSION, shown_host,
               server.port(), pdlb::to_string(cfg.policy), server.thread_count());

  auto& ioc = server.context(0);
  boost::asio::steady_timer log_timer(ioc);
  auto last_log = std::chrono::steady_clock::now();
  std::function<void()> schedule_log = [&] {
    if (cfg.log_interval <= 0) return;
    log_timer.expires_after(std::chrono::seconds(cfg.log_interval));
    log_timer.async_wait([&](boost::system::error_code ec) {
      if (ec) return;
      auto now = std::chrono::steady_clock::now();
      double secs = std::chrono::duration<double>(now - last_log).count();
      last_log = now;
      spdlog::info("{}", lb->status_line(secs));
      schedule_log();
    });
  };
  schedule_log();

  // Each thread prunes its own idle upstream connections now and then.
  std::vector<std::unique_ptr<boost::asio::steady_timer>> prune_timers;
  std::function<void(std::size_t)> schedule_prune = [&](std::size_t i) {
    auto& t = *prune_timers[i];
    t.expires_after(std::max<std::chrono::milliseconds>(cfg.upstream_idle_timeout / 2,
                                                        std::chrono::milliseconds(100)));
    t.async_wait([&, i](boost::system::error_code ec) {
      if (ec) return;
      server.thread_ctx(i).pools().prune();
      if (i == 0) lb->sweep();  // drained workers leave the list
      schedule_prune(i);
    });
  };
  for (std::size_t i = 0; i < server.thread_count(); ++i) {
    prune_timers.push_back(std::make_unique<boost::asio::steady_timer>(server.context(i)));
    boost::asio::post(server.context(i), [&, i] { schedule_prune(i); });
  }

  boost::asio::signal_set signals(ioc, SIGINT, SIGTERM);
  bool stopping = false;
  std::function<void()> wait_signal = [&] {
    signals.async_wait([&](boost::system::error_code ec, int sig) {
      if (ec) return;
      if (stopping) {
        spdlog::warn("second signal: exiting now");
        std::fflush(nullptr);
        std::_Exit(1);
      }
      stopping = true;
      spdlog::info("signal {}: no longer accepting; waiting up to {} ms for {} request(s) in flight", sig,
                   cfg.shutdown_grace.count(), server.in_flight());
      server.shutdown(cfg.shutdown_grace, [&] {
        log_timer.cancel();
        signals.cancel();
        for (std::size_t i = 0; i < server.thread_count(); ++i)
          boost::asio::post(server.context(i), [&, i] {
            prune_timers[i]->cancel();
            server.thread_ctx(i).pools().close_all();
          });
        server.release();
        spdlog::info("all requests finished; exiting");
      });
      wait_signal();
    });
  };
  wait_signal();

  server.run();
  lb.reset();
  return 0;
}
