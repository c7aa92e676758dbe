// Starting a real pdlb-sim worker for a test, and talking to its /sim/* control routes.
//
// The worker is started with --port 0 (and --bootstrap-port 0 for a prefill) and the fixture waits
// for its ready file (--ready-file), so tests never sleep for it. Later flags win over earlier ones, so
// `extra_args` may override anything the fixture passes.
#pragma once

#include "common/http_client.hpp"
#include "common/process.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pdlb::test {

class sim_worker {
 public:
  /// Starts `pdlb-sim --role ROLE --port 0 [--bootstrap-port 0] EXTRA...` and waits for it to be
  /// ready; throws std::runtime_error (with the worker's output) if it does not start.
  static std::unique_ptr<sim_worker> start(std::string role,
                                           std::vector<std::string> extra_args = {});

  /// The HTTP port.
  std::uint16_t port() const { return port_; }
  /// The bootstrap (KV handshake) port; 0 for a decode worker.
  std::uint16_t bootstrap_port() const { return bootstrap_port_; }
  /// The address it listens on (127.0.0.1 unless `--host` was given).
  const std::string& host() const { return host_; }
  /// "http://HOST:PORT".
  std::string url() const;
  /// "prefill" or "decode".
  const std::string& role() const { return role_; }

  /// GET /sim/stats.
  nlohmann::json stats();
  /// GET /sim/wait?QUERY&timeout_ms=T: returns the stats once every condition holds. On a timeout
  /// (408) it records a test failure (ADD_FAILURE, the test goes on) and returns the stats.
  /// QUERY is like "finished=3&min_running=1&max_active=0".
  nlohmann::json wait(const std::string& query,
                      std::chrono::milliseconds timeout = std::chrono::seconds(10));
  /// Like wait(), but reports a timeout as nullopt instead of a failure.
  std::optional<nlohmann::json> try_wait(const std::string& query,
                                 std::chrono::milliseconds timeout);
  /// POST /sim/fault with this JSON ({} clears every fault); throws if refused.
  void fault(const nlohmann::json& faults);
  /// POST /slow_down {"forward_sleep_time": seconds} (nullopt clears it).
  void slow_down(std::optional<double> seconds);

  /// The child process (its output, signals, exit).
  child_process& process() { return *process_; }

 private:
  sim_worker() = default;

  /// A request to this worker's own address.
  http_response request(const std::string& method, const std::string& target, const std::string& body = {},
                       std::chrono::milliseconds timeout = std::chrono::seconds(30));

  std::string role_;
  std::string host_ = "127.0.0.1";
  std::uint16_t port_ = 0;
  std::uint16_t bootstrap_port_ = 0;
  std::unique_ptr<child_process> process_;
};

}  // namespace pdlb::test
