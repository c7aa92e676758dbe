// load_balancer::reconfigure: the load balancer's part of a live reload (SIGHUP).
//
// The service calls it while every other I/O thread is parked, so writing cfg_ here races with
// nothing; what a request reads from cfg_ it reads when it needs it (a key when the request starts,
// the policy when a pair is picked), so requests in flight are not disturbed.
#include "pdlb/proxy.hpp"

#include <algorithm>

namespace pdlb {

reconfigure_result load_balancer::reconfigure(const config& next) {
  reconfigure_result r;
  auto live = [&](bool changed, const char* name) {
    if (changed) r.applied.emplace_back(name);
  };
  live(next.policy != cfg_.policy, "policy");
  live(next.api_key != cfg_.api_key, "api-key");
  live(next.admin_api_key != cfg_.admin_api_key, "admin-api-key");
  cfg_.policy = next.policy;
  cfg_.api_key = next.api_key;
  cfg_.admin_api_key = next.admin_api_key;

  live(next.max_retries != cfg_.max_retries, "max-retries");
  cfg_.max_retries = next.max_retries;
  live(next.max_fails != cfg_.max_fails || next.fail_timeout != cfg_.fail_timeout, "max-fails/fail-timeout");
  cfg_.max_fails = next.max_fails;
  cfg_.fail_timeout = next.fail_timeout;
  health_.max_fails = next.max_fails;
  health_.fail_timeout = next.fail_timeout;

  // The file's workers, through the registry: new ones join, removed ones drain (their requests in
  // flight finish). Workers added by the API or by DNS discovery are not the file's to remove.
  auto sync = [&](worker_role role, const std::vector<std::pair<worker_url, std::optional<std::uint16_t>>>& before,
                  const std::vector<std::pair<worker_url, std::optional<std::uint16_t>>>& after, const char* name) {
    bool changed = false;
    // Whole pairs, not structured bindings: clang 14 (the fuzz build) cannot capture those in a lambda.
    auto same = [](const auto& a, const auto& b) { return a.first.url == b.first.url && a.second == b.second; };
    for (const auto& old_one : before) {
      bool kept = std::any_of(after.begin(), after.end(), [&](const auto& n) { return same(n, old_one); });
      if (!kept && registry_.drain(old_one.first.url)) changed = true;
    }
    for (const auto& new_one : after) {
      bool had = std::any_of(before.begin(), before.end(), [&](const auto& o) { return same(o, new_one); });
      std::string error;
      if (!had && registry_.add(role, new_one.first, new_one.second, error)) changed = true;
    }
    live(changed, name);
  };
  auto prefill_list = [](const std::vector<prefill_config>& v) {
    std::vector<std::pair<worker_url, std::optional<std::uint16_t>>> out;
    for (const auto& p : v) out.emplace_back(p.url, p.bootstrap_port);
    return out;
  };
  auto decode_list = [](const std::vector<worker_url>& v) {
    std::vector<std::pair<worker_url, std::optional<std::uint16_t>>> out;
    for (const auto& d : v) out.emplace_back(d, std::nullopt);
    return out;
  };
  sync(worker_role::prefill, prefill_list(cfg_.prefill), prefill_list(next.prefill), "prefill");
  sync(worker_role::decode, decode_list(cfg_.decode), decode_list(next.decode), "decode");
  cfg_.prefill = next.prefill;
  cfg_.decode = next.decode;
  // Timeouts and connector limits, for every worker's calls from now on (waits already begun keep
  // theirs).
  const std::size_t applied_before = r.applied.size();
  live(next.timeout != cfg_.timeout, "timeout");
  live(next.connect_timeout != cfg_.connect_timeout, "connect-timeout");
  live(next.upstream_idle_timeout != cfg_.upstream_idle_timeout, "upstream-idle-timeout");
  live(next.connector_limit != cfg_.connector_limit, "connector-limit");
  live(next.connector_limit_per_host != cfg_.connector_limit_per_host, "connector-limit-per-host");
  cfg_.timeout = next.timeout;
  cfg_.connect_timeout = next.connect_timeout;
  cfg_.upstream_idle_timeout = next.upstream_idle_timeout;
  cfg_.connector_limit = next.connector_limit;
  cfg_.connector_limit_per_host = next.connector_limit_per_host;
  cfg_.max_body_size = next.max_body_size;  // also the largest worker answer read (reported by the service)
  if (r.applied.size() != applied_before)  // one of the five above changed
    registry_.reconfigure(upstream_options_of(cfg_), cfg_.connector_limit_per_host, cfg_.connector_limit);
  return r;
}

}  // namespace pdlb
