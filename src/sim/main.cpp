// pdlb-sim: a simulated SGLang prefill or decode worker for PD disaggregation tests and benches.
// See docs/simulator.md.
#include "api.hpp"
#include "engine.hpp"
#include "pdlb/fd_limit.hpp"
#include "options.hpp"

#include "pdlb/http_server.hpp"
#include "pdlb/ready_file.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>


#include <cstdio>
#include <cstdlib>
#include <map>

namespace {


}  // namespace

int main(int argc, char** argv) {
  using namespace pdlb;
  using namespace pdlb::sim;

  sim_options opts;
  std::string role = "decode";
  std::string log_level = "info";
  std::optional<std::uint32_t> die_after;
  std::optional<std::uint64_t> fault_count;

  CLI::App app{"pdlb-sim: a simulated SGLang prefill/decode (PD disaggregation) worker"};
  // Later flags win, so a test fixture's defaults can be overridden by appending flags.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", std::string("pdlb-sim ") + PDLB_VERSION);
  app.add_option("--role", role, "Worker role")
      ->required()
      ->check(CLI::IsMember({"prefill", "decode"}));
  app.add_option("--host", opts.host, "Address to bind")->capture_default_str();
  app.add_option("--port", opts.port, "HTTP port (0 picks a free one)")->capture_default_str();
  app.add_option("--bootstrap-port", opts.bootstrap_port,
                 "Prefill: bootstrap (KV handshake) port (0 picks a free one)")
      ->capture_default_str();
  app.add_option("--threads", opts.threads,
                 "Server threads; the simulator is single-threaded by design (only 1)")
      ->check(CLI::Range(1u, 1u))
      ->capture_default_str();
  app.add_option("--model-path", opts.model_path, "Model name reported by the info routes")
      ->capture_default_str();
  app.add_option("--context-length", opts.context_length, "Reported context length; caps output")
      ->capture_default_str();
  app.add_option("--prefill-tokens-per-s", opts.prefill_tokens_per_s,
                 "Prefill speed; 0 makes prefill instant")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-prefill-tokens", opts.max_prefill_tokens, "Token budget of a prefill batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-running-requests", opts.max_running_requests,
                 "Decode: requests in the running batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-total-tokens", opts.max_total_tokens,
                 "Decode: KV cache capacity in tokens")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--step-base-ms", opts.step_base_ms, "Decode step time: fixed part (ms)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--step-per-req-ms", opts.step_per_req_ms,
                 "Decode step time: per running request (ms)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--chars-per-token", opts.chars_per_token, "Text bytes per simulated token")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--default-max-new-tokens", opts.default_max_new_tokens,
                 "Output length when a request does not say")
      ->capture_default_str();
  app.add_option("--waiting-timeout", opts.waiting_timeout_s,
                 "Decode: seconds to wait for the prefill's KV (SGLANG_DISAGGREGATION_WAITING_TIMEOUT)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--decode-log-interval", opts.decode_log_interval,
                 "Decode: log a 'Decode batch.' line every N steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--room-ttl", opts.room_ttl_s, "Prefill: seconds a finished room is kept")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-rooms", opts.max_rooms, "Prefill: finished rooms kept at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--stamp-events", opts.stamp_events,
               "Add each streamed event's write time (steady_clock ns, CLOCK_MONOTONIC) as "
               "sim_write_ns: meta_info.sim_write_ns on /generate, top level on /v1 chunks");
  app.add_option("--fail-status", opts.faults.fail_status,
                 "Fault: answer generate routes with this HTTP status");
  app.add_flag("--drop-connection", opts.faults.drop_connection,
               "Fault: close generate connections without answering");
  app.add_flag("--stall", opts.faults.stall, "Fault: never answer generate requests");
  app.add_option("--latency-ms", opts.faults.latency_ms, "Fault: delay before handling");
  app.add_option("--die-after-tokens", die_after,
                 "Fault: cut streams after N token events, without the final chunk");
  app.add_flag("--refuse-connections", opts.faults.refuse_connections,
               "Fault: start with the HTTP listener closed (reopen with POST /sim/fault {})");
  app.add_option("--fault-count", fault_count, "Faults affect only the next N generate requests");
  std::string ready_file;
  app.add_option("--ready-file", ready_file,
                 "Once listening, write {\"host\", \"port\", \"bootstrap_port\"} to this file "
                 "(atomically)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  opts.role = role == "prefill" ? worker_role::prefill : worker_role::decode;
  opts.faults.die_after_tokens = die_after;
  opts.faults.count = fault_count;

  // Logs go to stderr, the ready line to stdout, so a log line never splits it.
  auto logger = spdlog::stderr_logger_mt("pdlb-sim");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S] %v");
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::flush_on(spdlog::level::info);
  pdlb::raise_fd_limit();  // thousands of streams need thousands of descriptors

  try {
    server_options sopts;
    sopts.host = opts.host;
    sopts.port = opts.port;
    sopts.threads = 1;
    sopts.name = "pdlb-sim";
    // Streams of a slowed-down decode may stay silent for long; a client that stops reading is
    // still cut after the write timeout.
    sopts.header_timeout = std::chrono::seconds(600);

    std::unique_ptr<api> handlers;
    http_server server(sopts, [&handlers](exchange& ex) { return handlers->handle(ex); });
    server.listen();
    auto& ioc = server.context(0);
    engine eng(ioc, opts);
    eng.start();
    handlers = std::make_unique<api>(eng, server, opts);

    net::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
      if (ec) return;
      spdlog::info("signal {}: shutting down", sig);
      // Requests in flight are simulated work with nothing to save: no grace period. Their
      // connections close and their handlers are cancelled (which aborts their requests in the
      // engine); then the engine ends its own loops and connections, and run() returns once
      // nothing is left, so every object is destroyed in order and leak checkers see the exit.
      server.shutdown(std::chrono::milliseconds(0), [&] {
        eng.stop();
        server.release();
      });
    });

    if (!ready_file.empty()) {
      write_ready_file(ready_file,
                       {opts.host, server.port(),
                        opts.role == worker_role::prefill
                            ? std::optional<std::uint16_t>(eng.bootstrap_port())
                            : std::nullopt,
                        std::nullopt});
    }
    std::printf("pdlb-sim ready role=%s http=%s:%u bootstrap=%u\n", role.c_str(),
                opts.host.c_str(), static_cast<unsigned>(server.port()),
                static_cast<unsigned>(eng.bootstrap_port()));
    std::fflush(stdout);
    spdlog::info("pdlb-sim {} role={} http={}:{} bootstrap={} max_running_requests={} "
                 "max_total_tokens={} step={}ms+{}ms/req",
                 PDLB_VERSION, role, opts.host, server.port(), eng.bootstrap_port(),
                 opts.max_running_requests, opts.max_total_tokens, opts.step_base_ms,
                 opts.step_per_req_ms);
    server.run();
  } catch (const std::exception& e) {
    spdlog::critical("pdlb-sim: {}", e.what());
    return 1;
  }
  return 0;
}
