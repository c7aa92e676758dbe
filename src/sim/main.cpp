// pdlb-sim: a simulated SGLang prefill or decode worker for PD disaggregation tests and benches.
// See docs/simulator.md.
#include "api.hpp"
#include "engine.hpp"
#include "options.hpp"

#include "pdlb/fd_limit.hpp"
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
#include <optional>

namespace {

using namespace pdlb;
using namespace pdlb::sim;

// What the command line says.
struct command_line {
  sim_options opts;
  std::string role = "decode";
  std::string log_level = "info";
  std::string ready_file;
  std::optional<std::uint32_t> die_after;
  std::optional<std::uint64_t> fault_count;
};

// The option table.
void add_options(CLI::App& app, command_line& cl) {
  app.add_option("--role", cl.role, "Worker role")
      ->required()
      ->check(CLI::IsMember({"prefill", "decode"}));
  app.add_option("--host", cl.opts.host, "Address to bind")->capture_default_str();
  app.add_option("--port", cl.opts.port, "HTTP port (0 picks a free one)")->capture_default_str();
  app.add_option("--bootstrap-port", cl.opts.bootstrap_port,
                 "Prefill: bootstrap (KV handshake) port (0 picks a free one)")
      ->capture_default_str();
  app.add_option("--threads", cl.opts.threads,
                 "Server threads; the simulator is single-threaded by design (only 1)")
      ->check(CLI::Range(1u, 1u))
      ->capture_default_str();
  app.add_option("--model-path", cl.opts.model_path, "Model name reported by the info routes")
      ->capture_default_str();
  app.add_option("--context-length", cl.opts.context_length, "Reported context length; caps output")
      ->capture_default_str();
  app.add_option("--prefill-tokens-per-s", cl.opts.prefill_tokens_per_s,
                 "Prefill speed; 0 makes prefill instant")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-prefill-tokens", cl.opts.max_prefill_tokens, "Token budget of a prefill batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-running-requests", cl.opts.max_running_requests,
                 "Decode: requests in the running batch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-total-tokens", cl.opts.max_total_tokens,
                 "Decode: KV cache capacity in tokens")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--step-base-ms", cl.opts.step_base_ms, "Decode step time: fixed part (ms)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--step-per-req-ms", cl.opts.step_per_req_ms,
                 "Decode step time: per running request (ms)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--chars-per-token", cl.opts.chars_per_token, "Text bytes per simulated token")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--default-max-new-tokens", cl.opts.default_max_new_tokens,
                 "Output length when a request does not say")
      ->capture_default_str();
  app.add_option("--waiting-timeout", cl.opts.waiting_timeout_s,
                 "Decode: seconds to wait for the prefill's KV (SGLANG_DISAGGREGATION_WAITING_TIMEOUT)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--decode-log-interval", cl.opts.decode_log_interval,
                 "Decode: log a 'Decode batch.' line every N steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--room-ttl", cl.opts.room_ttl_s, "Prefill: seconds a finished room is kept")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-rooms", cl.opts.max_rooms, "Prefill: finished rooms kept at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--stamp-events", cl.opts.stamp_events,
               "Add each streamed event's write time (steady_clock ns, CLOCK_MONOTONIC) as "
               "sim_write_ns: meta_info.sim_write_ns on /generate, top level on /v1 chunks");
  app.add_option("--fail-status", cl.opts.faults.fail_status,
                 "Fault: answer generate routes with this HTTP status");
  app.add_flag("--drop-connection", cl.opts.faults.drop_connection,
               "Fault: close generate connections without answering");
  app.add_flag("--stall", cl.opts.faults.stall, "Fault: never answer generate requests");
  app.add_option("--latency-ms", cl.opts.faults.latency_ms, "Fault: delay before handling");
  app.add_option("--die-after-tokens", cl.die_after,
                 "Fault: cut streams after N token events, without the final chunk");
  app.add_flag("--refuse-connections", cl.opts.faults.refuse_connections,
               "Fault: start with the HTTP listener closed (reopen with POST /sim/fault {})");
  app.add_option("--fault-count", cl.fault_count, "Faults affect only the next N generate requests");
  app.add_option("--ready-file", cl.ready_file,
                 "Once listening, write {\"host\", \"port\", \"bootstrap_port\"} to this file "
                 "(atomically)");
  app.add_option("--log-level", cl.log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
}

// Runs the simulated worker until SIGINT or SIGTERM; the exit code.
int serve(const command_line& cl) {
  const sim_options& opts = cl.opts;
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

    if (!cl.ready_file.empty()) {
      write_ready_file(cl.ready_file,
                       {opts.host, server.port(),
                        opts.role == worker_role::prefill
                            ? std::optional<std::uint16_t>(eng.bootstrap_port())
                            : std::nullopt,
                        std::nullopt});
    }
    std::printf("pdlb-sim ready role=%s http=%s:%u bootstrap=%u\n", cl.role.c_str(),
                opts.host.c_str(), static_cast<unsigned>(server.port()),
                static_cast<unsigned>(eng.bootstrap_port()));
    std::fflush(stdout);
    spdlog::info("pdlb-sim {} role={} http={}:{} bootstrap={} max_running_requests={} "
                 "max_total_tokens={} step={}ms+{}ms/req",
                 PDLB_VERSION, cl.role, opts.host, server.port(), eng.bootstrap_port(),
                 opts.max_running_requests, opts.max_total_tokens, opts.step_base_ms,
                 opts.step_per_req_ms);
    server.run();
  } catch (const std::exception& e) {
    spdlog::critical("pdlb-sim: {}", e.what());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  command_line cl;
  CLI::App app{"pdlb-sim: a simulated SGLang prefill/decode (PD disaggregation) worker"};
  // Later flags win, so a test fixture's defaults can be overridden by appending flags.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", std::string("pdlb-sim ") + PDLB_VERSION);
  add_options(app, cl);
  CLI11_PARSE(app, argc, argv);
  cl.opts.role = cl.role == "prefill" ? worker_role::prefill : worker_role::decode;
  cl.opts.faults.die_after_tokens = cl.die_after;
  cl.opts.faults.count = cl.fault_count;

  // Logs go to stderr, the ready line to stdout, so a log line never splits it.
  auto logger = spdlog::stderr_logger_mt("pdlb-sim");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S] %v");
  spdlog::set_level(spdlog::level::from_str(cl.log_level));
  spdlog::flush_on(spdlog::level::info);
  pdlb::raise_fd_limit();  // thousands of streams need thousands of descriptors
  return serve(cl);
}
