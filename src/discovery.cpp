#include "pdlb/dns.hpp"

#include "pdlb/worker.hpp"

#include <ares.h>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>

namespace pdlb {

namespace {

std::once_flag ares_init_once;

ares_channel as_channel(void* p) { return static_cast<ares_channel>(p); }

struct lookup_state {
  bool done = false;
  int status = ARES_SUCCESS;
  std::vector<std::string> addresses;
};

void on_addrinfo(void* arg, int status, int /*timeouts*/, ares_addrinfo* result) {
  auto& st = *static_cast<lookup_state*>(arg);
  st.done = true;
  st.status = status;
  if (!result) return;
  for (auto* node = result->nodes; node; node = node->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* addr = nullptr;
    if (node->ai_family == AF_INET)
      addr = &reinterpret_cast<const sockaddr_in*>(node->ai_addr)->sin_addr;
    else if (node->ai_family == AF_INET6)
      addr = &reinterpret_cast<const sockaddr_in6*>(node->ai_addr)->sin6_addr;
    if (addr && ::inet_ntop(node->ai_family, addr, text, sizeof text)) st.addresses.emplace_back(text);
  }
  ares_freeaddrinfo(result);
}

}  // namespace

dns_resolver::dns_resolver(const std::string& server, std::chrono::milliseconds try_timeout) {
  std::call_once(ares_init_once, [] {
    if (int rc = ares_library_init(ARES_LIB_INIT_ALL); rc != ARES_SUCCESS)
      throw std::runtime_error(std::string("c-ares: ") + ares_strerror(rc));
  });
  ares_options opts{};
  int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
  opts.timeout = static_cast<int>(std::max<std::int64_t>(try_timeout.count(), 1));
  opts.tries = 2;
  char dns_only[] = "b";
  if (!server.empty()) {
    // An explicit server is the whole truth: /etc/hosts is not read.
    mask |= ARES_OPT_LOOKUPS;
    opts.lookups = dns_only;
  }
  ares_channel channel = nullptr;
  if (int rc = ares_init_options(&channel, &opts, mask); rc != ARES_SUCCESS)
    throw std::runtime_error(std::string("c-ares: ") + ares_strerror(rc));
  channel_ = channel;
  if (!server.empty()) {
    if (int rc = ares_set_servers_ports_csv(channel, server.c_str()); rc != ARES_SUCCESS) {
      ares_destroy(channel);
      channel_ = nullptr;
      throw std::runtime_error("c-ares: DNS server '" + server + "': " + ares_strerror(rc));
    }
  }
}

dns_resolver::~dns_resolver() {
  if (channel_) ares_destroy(as_channel(channel_));
}

dns_answer dns_resolver::resolve(const std::string& name, std::chrono::steady_clock::time_point deadline,
                                 const std::atomic<bool>& stop) {
  auto channel = as_channel(channel_);
  lookup_state st;
  ares_addrinfo_hints hints{};
  hints.ai_family = AF_UNSPEC;     // A and AAAA
  hints.ai_flags = ARES_AI_NOSORT;  // sorting would connect() a UDP socket to every address
  ares_getaddrinfo(channel, name.c_str(), nullptr, &hints, on_addrinfo, &st);
  bool timed_out = false;
  while (!st.done) {
    if (stop.load() || std::chrono::steady_clock::now() >= deadline) {
      timed_out = !stop.load();
      ares_cancel(channel);  // calls on_addrinfo with ARES_ECANCELLED
      break;
    }
    ares_socket_t socks[ARES_GETSOCK_MAXNUM];
    const int bits = ares_getsock(channel, socks, ARES_GETSOCK_MAXNUM);
    pollfd fds[ARES_GETSOCK_MAXNUM];
    nfds_t n = 0;
    for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
      const bool r = ARES_GETSOCK_READABLE(bits, i), w = ARES_GETSOCK_WRITABLE(bits, i);
      if (!r && !w) continue;
      fds[n++] = pollfd{socks[i], static_cast<short>((r ? POLLIN : 0) | (w ? POLLOUT : 0)), 0};
    }
    // Wake at c-ares' next retry time, and at least every 100 ms to notice `stop` and `deadline`.
    timeval max_wait{0, 100 * 1000}, wait{};
    ares_timeout(channel, &max_wait, &wait);
    const int ms = static_cast<int>(wait.tv_sec * 1000 + wait.tv_usec / 1000);
    const int ready = ::poll(fds, n, ms);
    if (ready <= 0) {
      ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // retries and timeouts
      continue;
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (!fds[i].revents) continue;
      const bool readable = fds[i].revents & (POLLIN | POLLERR | POLLHUP);
      const bool writable = fds[i].revents & POLLOUT;
      ares_process_fd(channel, readable ? fds[i].fd : ARES_SOCKET_BAD, writable ? fds[i].fd : ARES_SOCKET_BAD);
    }
  }
  dns_answer out;
  if (st.status == ARES_SUCCESS && !st.addresses.empty()) {
    std::sort(st.addresses.begin(), st.addresses.end());
    st.addresses.erase(std::unique(st.addresses.begin(), st.addresses.end()), st.addresses.end());
    out.what = dns_answer::outcome::records;
    out.addresses = std::move(st.addresses);
  } else if (st.status == ARES_SUCCESS || st.status == ARES_ENOTFOUND || st.status == ARES_ENODATA) {
    out.what = dns_answer::outcome::no_records;
  } else {
    out.what = dns_answer::outcome::failed;
    out.error = timed_out ? std::string("timed out") : std::string(ares_strerror(st.status));
  }
  return out;
}

std::string dns_worker_url(std::string_view address, std::uint16_t port) {
  const bool v6 = address.find(':') != std::string_view::npos;
  std::string url = "http://";
  if (v6) url += '[';
  url += address;
  if (v6) url += ']';
  return url + ":" + std::to_string(port);
}

dns_discovery::dns_discovery(const config& cfg, worker_registry& registry)
    : registry_(registry), server_(cfg.dns_server), interval_(cfg.dns_interval) {
  for (const auto& s : cfg.dns) {
    sources_.push_back(source_state{s, {}, {}});
    spdlog::info("DNS discovery: {} workers from {}:{} every {} ms ({})", s.prefill ? "prefill" : "decode", s.name,
                 s.port, interval_.count(), server_.empty() ? "system resolver" : "server " + server_);
  }
  thread_ = std::thread([this] { run(); });
}

dns_discovery::~dns_discovery() {
  stop();
  if (thread_.joinable()) thread_.join();
}

void dns_discovery::stop() {
  {
    std::lock_guard lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
}

void dns_discovery::run() {
  // One resolution (both tries) must end before the next is due, and within 5 s in any case.
  const auto budget = std::min<std::chrono::milliseconds>(interval_, std::chrono::seconds(5));
  std::unique_ptr<dns_resolver> resolver;
  std::string init_error;
  while (!stop_.load()) {
    const auto round = std::chrono::steady_clock::now();
    if (!resolver) {
      try {
        resolver = std::make_unique<dns_resolver>(server_, budget / 2);
        init_error.clear();
      } catch (const std::exception& e) {
        if (init_error != e.what()) spdlog::error("DNS discovery: {} (trying again every interval)", e.what());
        init_error = e.what();
      }
    }
    for (auto& s : sources_) {
      if (!resolver || stop_.load()) break;
      apply(s, resolver->resolve(s.source.name, std::chrono::steady_clock::now() + budget, stop_));
    }
    std::unique_lock lock(mutex_);
    wake_.wait_until(lock, round + interval_, [this] { return stop_.load(); });
  }
}

void dns_discovery::apply(source_state& s, const dns_answer& answer) {
  const auto& src = s.source;
  const auto role = src.prefill ? worker_role::prefill : worker_role::decode;
  if (stop_.load()) return;  // a cancelled resolution says nothing about the records
  if (answer.what == dns_answer::outcome::failed) {
    // Keep the workers as they are: a DNS outage must not empty the pools.
    if (s.last_error != answer.error)
      spdlog::warn("DNS discovery: resolving {} failed ({}); keeping its {} worker(s)", src.name, answer.error,
                   s.added.size());
    s.last_error = answer.error;
    return;
  }
  s.last_error.clear();
  std::set<std::string> now;
  for (const auto& address : answer.addresses) {
    worker_url url;
    std::string error;
    if (!parse_worker_url(dns_worker_url(address, src.port), url, error)) {
      spdlog::warn("DNS discovery: {}: {}", src.name, error);
      continue;
    }
    now.insert(url.url);
    // Every record is added unless a worker with its URL is listed and not draining: a record that
    // comes back after being drained (by DNS or by DELETE /workers) is added again. Workers listed
    // by other means (--decode, POST /workers) are left to them.
    if (auto w = registry_.add(role, url, src.bootstrap_port, error)) {
      s.added.insert(url.url);
      spdlog::info("DNS discovery: {} worker {} added ({} has it)", to_string(role), w->url(), src.name);
    }
  }
  for (auto it = s.added.begin(); it != s.added.end();) {
    if (now.count(*it)) {
      ++it;
      continue;
    }
    if (registry_.drain(*it))
      spdlog::info("DNS discovery: {} worker {} draining ({} no longer has it)", to_string(role), *it, src.name);
    it = s.added.erase(it);
  }
}

}  // namespace pdlb
