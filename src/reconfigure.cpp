// load_balancer::reconfigure: the load balancer's part of a live reload (SIGHUP).
//
// The service calls it while every other I/O thread is parked, so writing cfg_ here races with
// nothing; what a request reads from cfg_ it reads when it needs it (a key when the request starts,
// the policy when a pair is picked), so requests in flight are not disturbed.
#include "pdlb/proxy.hpp"

namespace pdlb {

namespace {

bool same_prefill(const std::vector<prefill_config>& a, const std::vector<prefill_config>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].url.url != b[i].url.url || a[i].bootstrap_port != b[i].bootstrap_port) return false;
  return true;
}

bool same_decode(const std::vector<worker_url>& a, const std::vector<worker_url>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].url != b[i].url) return false;
  return true;
}

}  // namespace

reconfigure_result load_balancer::reconfigure(const config& next) {
  reconfigure_result r;
  auto live = [&](bool changed, const char* name) {
    if (changed) r.applied.emplace_back(name);
  };
  // Not yet live: the worker lists need the worker registry (workers are owned by index today,
  // and requests in flight hold them); timeouts and connector limits are copied into each
  // upstream_host and the shared conn_limiter when they are built.
  auto restart = [&](bool changed, const char* name) {
    if (changed) r.needs_restart.emplace_back(name);
  };
  live(next.policy != cfg_.policy, "policy");
  live(next.api_key != cfg_.api_key, "api-key");
  live(next.admin_api_key != cfg_.admin_api_key, "admin-api-key");
  cfg_.policy = next.policy;
  cfg_.api_key = next.api_key;
  cfg_.admin_api_key = next.admin_api_key;

  restart(!same_prefill(next.prefill, cfg_.prefill), "prefill");
  restart(!same_decode(next.decode, cfg_.decode), "decode");
  restart(next.timeout != cfg_.timeout, "timeout");
  restart(next.connect_timeout != cfg_.connect_timeout, "connect-timeout");
  restart(next.upstream_idle_timeout != cfg_.upstream_idle_timeout, "upstream-idle-timeout");
  restart(next.connector_limit != cfg_.connector_limit, "connector-limit");
  restart(next.connector_limit_per_host != cfg_.connector_limit_per_host, "connector-limit-per-host");
  return r;
}

}  // namespace pdlb
