// A real pdlb in front of real pdlb-sim workers on loopback, for integration tests.
#pragma once

#include "common/http_client.hpp"
#include "common/pdlb_fixture.hpp"
#include "common/sim_fixture.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace pdlb::test {

using json = nlohmann::json;

/// Simulator flags that keep tests fast: instant prefill, short decode steps.
inline std::vector<std::string> fast_sim_args() {
  return {"--prefill-tokens-per-s", "0", "--step-base-ms", "1", "--step-per-req-ms", "0"};
}

struct cluster {
  std::vector<std::unique_ptr<sim_worker>> prefill;
  std::vector<std::unique_ptr<sim_worker>> decode;
  std::unique_ptr<pdlb_process> lb;

  /// Starts `np` prefill and `nd` decode workers and a pdlb in front of them.
  static std::unique_ptr<cluster> start(int np, int nd, std::vector<std::string> lb_args = {},
                                        std::vector<std::string> sim_args = fast_sim_args()) {
    auto c = std::make_unique<cluster>();
    for (int i = 0; i < np; ++i) c->prefill.push_back(sim_worker::start("prefill", sim_args));
    for (int i = 0; i < nd; ++i) c->decode.push_back(sim_worker::start("decode", sim_args));
    c->start_lb(std::move(lb_args));
    return c;
  }

  void start_lb(std::vector<std::string> lb_args) {
    std::vector<std::string> args;
    if (!prefill.empty()) {
      args.push_back("--prefill");
      for (auto& p : prefill) args.push_back(p->url());
      args.push_back("--prefill-bootstrap-ports");
      for (auto& p : prefill) args.push_back(std::to_string(p->bootstrap_port()));
    }
    if (!decode.empty()) {
      args.push_back("--decode");
      for (auto& d : decode) args.push_back(d->url());
    }
    args.insert(args.end(), lb_args.begin(), lb_args.end());
    lb = pdlb_process::start(args);
  }

  std::uint16_t port() const { return lb->port(); }

  http_response post(const std::string& path, const json& body, const header_list& headers = {}) const {
    return http_request(port(), "POST", path, body.dump(), headers);
  }
  http_response post_raw(const std::string& path, const std::string& body,
                         const header_list& headers = {}) const {
    return http_request(port(), "POST", path, body, headers);
  }
  http_response get(const std::string& path) const { return http_request(port(), "GET", path); }
};

/// POSTs JSON straight to a simulated worker (e.g. /slow_down, /sim/fault).
inline http_response post_json(sim_worker& w, const std::string& path, const json& body) {
  return http_request(w.port(), "POST", path, body.dump());
}

/// Waits on the worker's /sim/wait for `query` (e.g. "active=0&min_aborted=1"); returns true if it
/// held within `timeout`.
inline bool sim_wait(sim_worker& w, const std::string& query, std::chrono::milliseconds timeout) {
  auto r = http_request(w.port(), "GET",
                        "/sim/wait?" + query + "&timeout_ms=" + std::to_string(timeout.count()), {}, {},
                        timeout + std::chrono::seconds(10));
  return r.status == 200;
}

/// Parses a body as JSON, failing the test (and returning null) if it is not.
inline json parse_json(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON: " << body;
  return j.is_discarded() ? json() : j;
}

/// True if the body is pdlb's error shape {"error":{"message":...}}.
inline bool is_error_body(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  return !j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_object() &&
         j["error"].contains("message") && j["error"]["message"].is_string();
}

inline json small_request(bool stream = false, int tokens = 4) {
  return {{"text", "fault test"}, {"stream", stream}, {"sampling_params", {{"max_new_tokens", tokens}}}};
}

// After a fault: the workers hold nothing, pdlb counts nothing in flight on any worker, and it
// still serves a normal request.
inline void expect_clean_and_serving(cluster& c) {
  for (auto& d : c.decode) EXPECT_TRUE(sim_wait(*d, "active=0", std::chrono::seconds(10))) << d->stats().dump();
  for (auto& p : c.prefill) EXPECT_TRUE(sim_wait(*p, "active=0", std::chrono::seconds(10))) << p->stats().dump();
  auto stats = parse_json(c.get("/pdlb/stats").body);
  for (const char* pool : {"prefill", "decode"})
    for (auto& w : stats[pool]) EXPECT_EQ(w["in_flight"], 0) << stats.dump();
  auto ok = c.post("/generate", small_request());
  EXPECT_EQ(ok.status, 200u) << ok.body;
}

}  // namespace pdlb::test
