#include "common/sim_fixture.hpp"

#include "common/http_client.hpp"

#include <gtest/gtest.h>

#include <stdexcept>

namespace pdlb::test {

std::unique_ptr<sim_worker> sim_worker::start(std::string role,
                                              std::vector<std::string> extra_args) {
  std::vector<std::string> argv{PDLB_SIM_BIN, "--role", role, "--port", "0"};
  if (role == "prefill") {
    argv.push_back("--bootstrap-port");
    argv.push_back("0");
  }
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  const std::string ready_file = new_ready_file_path();
  argv.push_back("--ready-file");
  argv.push_back(ready_file);

  std::unique_ptr<sim_worker> w(new sim_worker());
  w->role_ = role;
  w->process_ = std::make_unique<child_process>(argv);
  auto ready = wait_for_ready_file(*w->process_, ready_file, std::chrono::seconds(30));
  if (!ready) {
    throw std::runtime_error("pdlb-sim --role " + role +
                             " did not become ready; output:\n" + w->process_->output());
  }
  // Tests bind workers to loopback addresses only (127.0.0.0/8): any other is not theirs to reach.
  if (ready->host.rfind("127.", 0) == 0) w->host_ = ready->host;
  w->port_ = ready->port;
  w->bootstrap_port_ = ready->bootstrap_port.value_or(0);
  return w;
}

std::string sim_worker::url() const { return "http://" + host_ + ":" + std::to_string(port_); }

http_response sim_worker::request(const std::string& method, const std::string& target, const std::string& body,
                                  std::chrono::milliseconds timeout) {
  try {
    http_connection c(port_, host_, timeout);
    return c.request(method, target, body);
  } catch (const std::exception& e) {
    http_response r;
    r.error = e.what();
    return r;
  }
}

nlohmann::json sim_worker::stats() {
  auto r = request("GET", "/sim/stats");
  if (r.status != 200)
    throw std::runtime_error("GET /sim/stats failed: " + std::to_string(r.status) + " " + r.error);
  return nlohmann::json::parse(r.body);
}

std::optional<nlohmann::json> sim_worker::try_wait(const std::string& query,
                                                   std::chrono::milliseconds timeout) {
  std::string target = "/sim/wait?" + query;
  if (!query.empty()) target += "&";
  target += "timeout_ms=" + std::to_string(timeout.count());
  auto r = request("GET", target, {}, timeout + std::chrono::seconds(10));
  if (r.status == 200) return nlohmann::json::parse(r.body);
  if (r.status == 408) return std::nullopt;
  throw std::runtime_error("GET " + target + " failed: " + std::to_string(r.status) + " " +
                           r.error + " " + r.body);
}

nlohmann::json sim_worker::wait(const std::string& query, std::chrono::milliseconds timeout) {
  auto j = try_wait(query, timeout);
  if (j) return *j;
  auto s = stats();
  ADD_FAILURE() << role_ << " worker: /sim/wait?" << query << " timed out after "
                << timeout.count() << " ms; stats: " << s.dump();
  return s;
}

void sim_worker::fault(const nlohmann::json& faults) {
  auto r = request("POST", "/sim/fault", faults.dump());
  if (r.status != 200)
    throw std::runtime_error("POST /sim/fault failed: " + std::to_string(r.status) + " " + r.body);
}

void sim_worker::slow_down(std::optional<double> seconds) {
  nlohmann::json body{{"forward_sleep_time", seconds ? nlohmann::json(*seconds) : nullptr}};
  auto r = request("POST", "/slow_down", body.dump());
  if (r.status != 200)
    throw std::runtime_error("POST /slow_down failed: " + std::to_string(r.status) + " " + r.body);
}

}  // namespace pdlb::test
