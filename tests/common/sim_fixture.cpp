#include "common/sim_fixture.hpp"

#include "common/http_client.hpp"

#include <gtest/gtest.h>

#include <regex>
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

  std::unique_ptr<sim_worker> w(new sim_worker());
  w->role_ = role;
  w->process_ = std::make_unique<child_process>(argv);
  static const std::regex ready(R"(pdlb-sim ready role=(\w+) http=(\S+):(\d+) bootstrap=(\d+))");
  auto m = w->process_->wait_for_line(ready, std::chrono::seconds(30));
  if (!m) {
    throw std::runtime_error("pdlb-sim --role " + role +
                             " did not become ready; output:\n" + w->process_->output());
  }
  // Tests bind workers to loopback addresses only (127.0.0.0/8): any other is not theirs to reach.
  if ((*m)[2].rfind("127.", 0) == 0) w->host_ = (*m)[2];
  w->port_ = static_cast<std::uint16_t>(std::stoul((*m)[3]));
  w->bootstrap_port_ = static_cast<std::uint16_t>(std::stoul((*m)[4]));
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
