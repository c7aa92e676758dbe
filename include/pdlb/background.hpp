// The load balancer's background tasks: active health checks, /get_load polls (--load-source
// worker) and DNS discovery. load_balancer::start_background() starts the ones configured.
//
// Health checks and load polls are coroutines on the io_context given to start_background()
// (pdlb's thread 0). They query workers with upstream_call from a thread_context of their own,
// so their pooled connections stay apart from the request path's and are pruned by these tasks.
// DNS discovery runs on a thread of its own (see dns.hpp).
#pragma once

#include "pdlb/config.hpp"
#include "pdlb/thread_context.hpp"
#include "pdlb/worker.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

namespace pdlb {

class dns_discovery;

/// The requests a worker reports in a /get_load answer: SGLang's list of per-DP-rank objects
/// (the sum of their "num_reqs", which counts running and waiting requests), or one such object.
/// nullopt if the body has another shape.
std::optional<std::int64_t> parse_get_load(std::string_view body);

class background_tasks {
 public:
  /// Starts the configured tasks on `ioc` (and the discovery thread).
  background_tasks(const config& cfg, worker_registry& registry, net::io_context& ioc);
  /// Joins the discovery thread. The coroutines must be over: call stop() and let `ioc` run first.
  ~background_tasks();
  background_tasks(const background_tasks&) = delete;
  background_tasks& operator=(const background_tasks&) = delete;

  /// Stops every task: the coroutines are cancelled (on `ioc`'s thread), the discovery thread is
  /// told to stop. Callable from any thread; does not wait.
  void stop();

 private:
  net::awaitable<void> health_checks();
  net::awaitable<void> load_polls();
  void spawn(net::awaitable<void> task, const char* name);

  const config& cfg_;
  worker_registry& registry_;
  net::io_context& ioc_;
  thread_context ctx_;
  std::vector<std::unique_ptr<net::cancellation_signal>> signals_;
  std::unique_ptr<dns_discovery> discovery_;
};

}  // namespace pdlb
