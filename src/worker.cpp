#include "pdlb/worker.hpp"

#include "pdlb/policy.hpp"

#include <algorithm>

namespace pdlb {

std::string_view to_string(worker_role r) { return r == worker_role::prefill ? "prefill" : "decode"; }

std::string_view to_string(worker_state s) {
  switch (s) {
    case worker_state::available: return "available";
    case worker_state::ejected: return "ejected";
    case worker_state::draining: return "draining";
  }
  return "?";
}

std::string_view to_string(failure_kind k) {
  switch (k) {
    case failure_kind::refused: return "refused";
    case failure_kind::connect: return "connect";
    case failure_kind::timeout: return "timeout";
    case failure_kind::reset: return "reset";
    case failure_kind::status: return "status";
    case failure_kind::bootstrap: return "bootstrap";
  }
  return "?";
}

bool reports_kv_handoff_failure(std::string_view body) {
  for (std::string_view marker : {"transfer failed for request", "handshake failed for request", "KVTransferError"})
    if (body.find(marker) != std::string_view::npos) return true;
  return false;
}

worker::worker(worker_role r, std::optional<std::uint16_t> port, std::unique_ptr<upstream_host> h,
               std::size_t threads)
    : role(r),
      prefill(r == worker_role::prefill),
      bootstrap_port(port),
      host(std::move(h)),
      threads_(std::max<std::size_t>(threads, 1)),
      slots_(std::make_unique<thread_slot[]>(threads_)) {}

steady_time worker::ejected_until() const {
  return steady_time(steady_time::duration(ejected_until_.load(std::memory_order_relaxed)));
}

worker_state worker::state(steady_time now) const {
  if (draining.load(std::memory_order_relaxed)) return worker_state::draining;
  if (check_ejected() || failure_ejected(now)) return worker_state::ejected;
  return worker_state::available;
}

void worker::record_success() {
  // Plain loads first: a healthy worker's counters are already zero, and a store per request
  // would bounce their cache line between threads.
  if (fails_in_a_row_.load(std::memory_order_relaxed) != 0) fails_in_a_row_.store(0, std::memory_order_relaxed);
  if (ejections_in_a_row_.load(std::memory_order_relaxed) != 0)
    ejections_in_a_row_.store(0, std::memory_order_relaxed);
}

bool worker::record_failure(failure_kind kind, const health_policy& policy, steady_time now) {
  failures.fetch_add(1, std::memory_order_relaxed);
  failures_by_kind[static_cast<std::size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
  if (policy.max_fails == 0) return false;
  // On probation (ejected before, not yet restored by a success), one failure ejects again.
  const bool probation = ejections_in_a_row_.load(std::memory_order_relaxed) > 0;
  const auto fails = fails_in_a_row_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (kind != failure_kind::refused && !probation && fails < policy.max_fails) return false;
  auto current = ejected_until_.load(std::memory_order_relaxed);
  if (steady_time(steady_time::duration(current)) > now) return false;  // already ejected
  const auto in_a_row = std::min<std::uint32_t>(ejections_in_a_row_.load(std::memory_order_relaxed), 16);
  auto length = std::min(policy.fail_timeout * (1u << in_a_row), policy.max_ejection);
  const auto until = (now + length).time_since_epoch().count();
  // Several threads may see the same outage at once: one of them ejects.
  if (!ejected_until_.compare_exchange_strong(current, until, std::memory_order_relaxed)) return false;
  ejections_in_a_row_.fetch_add(1, std::memory_order_relaxed);
  fails_in_a_row_.store(0, std::memory_order_relaxed);
  ejections.fetch_add(1, std::memory_order_relaxed);
  return true;
}

check_change worker::record_check(bool passed, const check_policy& policy) {
  if (passed) {
    checks_failed_in_a_row_ = 0;
    if (!check_ejected()) return check_change::none;
    if (++checks_passed_in_a_row_ < policy.passes) return check_change::none;
    checks_passed_in_a_row_ = 0;
    check_ejected_.store(false, std::memory_order_relaxed);
    return check_change::restored;
  }
  checks_passed_in_a_row_ = 0;
  if (check_ejected()) return check_change::none;
  if (++checks_failed_in_a_row_ < policy.failures) return check_change::none;
  checks_failed_in_a_row_ = 0;
  check_ejected_.store(true, std::memory_order_relaxed);
  ejections.fetch_add(1, std::memory_order_relaxed);
  return check_change::ejected;
}

worker_registry::worker_registry(upstream_options opts, std::size_t per_host_limit, std::size_t global_limit,
                                 std::size_t threads)
    : opts_(opts),
      per_host_limit_(per_host_limit),
      threads_(threads),
      global_limit_(std::make_shared<conn_limiter>(global_limit)),
      current_(std::make_shared<const worker_set>()) {}

worker_registry::~worker_registry() = default;

void worker_registry::reconfigure(const upstream_options& opts, std::size_t per_host_limit, std::size_t global_limit) {
  std::lock_guard lock(change_mutex_);
  opts_ = opts;
  per_host_limit_ = per_host_limit;
  global_limit_->set_limit(global_limit);
  const auto set = snapshot();
  for (auto role : {worker_role::prefill, worker_role::decode})
    for (const auto& w : set->of(role)) w->host->reconfigure(opts, per_host_limit);
}

void worker_registry::publish(std::shared_ptr<const worker_set> next) {
  current_.store(std::move(next), std::memory_order_release);
}

std::shared_ptr<worker> worker_registry::add(worker_role role, const worker_url& url,
                                             std::optional<std::uint16_t> bootstrap_port,
                                             std::string& error) {
  std::lock_guard lock(change_mutex_);
  auto set = snapshot();
  // One server may be both a prefill and a decode worker (minilb allows it; benchmarks with stub
  // workers do it), but not twice in one role.
  for (const auto& w : set->of(role))
    if (w->url() == url.url && !w->draining.load()) {
      error = "worker " + url.url + " is already listed as a " + std::string(to_string(role)) + " worker";
      return nullptr;
    }
  auto host = std::make_unique<upstream_host>(url, per_host_limit_, global_limit_, opts_, threads_);
  auto w = std::make_shared<worker>(role, role == worker_role::prefill ? bootstrap_port : std::nullopt,
                                    std::move(host), threads_);
  auto next = std::make_shared<worker_set>(*set);
  (role == worker_role::prefill ? next->prefill : next->decode).push_back(w);
  publish(std::move(next));
  return w;
}

bool worker_registry::drain(std::string_view url) {
  {
    std::lock_guard lock(change_mutex_);
    auto set = snapshot();
    bool found = false;
    for (const auto* pool : {&set->prefill, &set->decode})
      for (const auto& w : *pool)
        if (w->url() == url && !w->draining.load()) {
          w->draining.store(true);
          w->host->retire();  // its idle connections close at each thread's next prune
          found = true;
        }
    if (!found) return false;
  }
  sweep();
  return true;
}

void worker_registry::sweep() {
  std::lock_guard lock(change_mutex_);
  auto set = snapshot();
  auto gone = [](const std::shared_ptr<worker>& w) {
    return w->draining.load() && w->in_flight.load() == 0;
  };
  if (std::none_of(set->prefill.begin(), set->prefill.end(), gone) &&
      std::none_of(set->decode.begin(), set->decode.end(), gone))
    return;
  auto next = std::make_shared<worker_set>(*set);
  std::erase_if(next->prefill, gone);
  std::erase_if(next->decode, gone);
  publish(std::move(next));
}

std::shared_ptr<worker> worker_registry::find(std::string_view url) const {
  auto set = snapshot();
  for (const auto* pool : {&set->prefill, &set->decode})
    for (const auto& w : *pool)
      if (w->url() == url) return w;
  return nullptr;
}

namespace {

// Picks among the workers of `pool` that `ok` accepts, by `policy`; nullptr if none does. Pools are
// small (a few dozen workers at most), so the candidates are counted and walked, not collected.
template <class Ok>
std::shared_ptr<worker> choose(const std::vector<std::shared_ptr<worker>>& pool, policy_kind policy,
                               std::atomic<std::size_t>& rr, std::mt19937_64& rng, Ok ok) {
  std::size_t n = 0;
  for (const auto& w : pool) n += ok(*w) ? 1 : 0;
  if (n == 0) return nullptr;
  auto nth = [&](std::size_t k) -> const std::shared_ptr<worker>& {
    for (const auto& w : pool)
      if (ok(*w) && k-- == 0) return w;
    return pool.front();  // not reached: k < n
  };
  auto load = [&](std::size_t i) { return nth(i)->load(); };
  return nth(pick_worker(policy, n, load, rng, rr));
}

}  // namespace

std::shared_ptr<worker> pick_worker_for(const std::vector<std::shared_ptr<worker>>& pool,
                                        policy_kind policy, std::atomic<std::size_t>& rr,
                                        std::mt19937_64& rng, steady_time now,
                                        const std::vector<const worker*>& avoid, bool& panic) {
  panic = false;
  auto avoided = [&](const worker& w) { return std::find(avoid.begin(), avoid.end(), &w) != avoid.end(); };
  if (!avoid.empty()) {
    if (auto w = choose(pool, policy, rr, rng, [&](const worker& w) { return w.available(now) && !avoided(w); }))
      return w;
  }
  if (auto w = choose(pool, policy, rr, rng, [&](const worker& w) { return w.available(now); })) return w;
  panic = true;
  if (!avoid.empty()) {
    if (auto w = choose(pool, policy, rr, rng,
                        [&](const worker& w) { return !w.draining.load(std::memory_order_relaxed) && !avoided(w); }))
      return w;
  }
  return choose(pool, policy, rr, rng, [](const worker& w) { return !w.draining.load(std::memory_order_relaxed); });
}

}  // namespace pdlb
