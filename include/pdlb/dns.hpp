// DNS discovery: the A/AAAA records of a name are workers (--prefill-dns, --decode-dns).
//
// Names are resolved with c-ares on a thread of their own, never on an I/O thread, and every
// resolution has a deadline. Each --dns-interval the records are compared with the workers this
// discovery added: a new record is added to the registry, a record gone is drained (its requests
// in flight finish). A failed resolution (timeout, SERVFAIL, refused) changes nothing, so a DNS
// outage does not empty the pools; a name that no longer exists or has no address (NXDOMAIN,
// NODATA: a Kubernetes headless Service with no ready pod) drains every worker it added.
#pragma once

#include "pdlb/config.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace pdlb {

class worker_registry;

/// What resolving a name gave.
struct dns_answer {
  enum class outcome {
    records,     ///< `addresses` holds at least one address.
    no_records,  ///< The name does not exist or has no A/AAAA record.
    failed,      ///< No usable answer (timeout, server failure...): `error` says why.
  } what = outcome::failed;
  std::vector<std::string> addresses;  ///< Textual IPv4/IPv6 addresses, sorted, no duplicates.
  std::string error;
};

/// A c-ares channel. Not thread-safe: one thread uses it.
class dns_resolver {
 public:
  /// Asks `server` ("ADDRESS[:PORT]", as --dns-server) or, if empty, the system's resolvers
  /// (/etc/resolv.conf, /etc/hosts). Each query is tried twice with `try_timeout`. Throws
  /// std::runtime_error if c-ares cannot start.
  dns_resolver(const std::string& server, std::chrono::milliseconds try_timeout);
  ~dns_resolver();
  dns_resolver(const dns_resolver&) = delete;
  dns_resolver& operator=(const dns_resolver&) = delete;

  /// Resolves `name` (A and AAAA), blocking until done, until `deadline`, or until `stop` is set.
  dns_answer resolve(const std::string& name, std::chrono::steady_clock::time_point deadline,
                     const std::atomic<bool>& stop);

 private:
  void* channel_ = nullptr;  // ares_channel, kept out of this header
};

/// The worker URL for an address of a record: http://ADDRESS:PORT, IPv6 in brackets.
std::string dns_worker_url(std::string_view address, std::uint16_t port);

/// Re-resolves the --*-dns names every --dns-interval on a thread of its own and changes the
/// registry's workers to match.
class dns_discovery {
 public:
  /// Starts the thread; the first resolution begins at once.
  dns_discovery(const config& cfg, worker_registry& registry);
  /// Stops and joins the thread.
  ~dns_discovery();
  dns_discovery(const dns_discovery&) = delete;
  dns_discovery& operator=(const dns_discovery&) = delete;

  /// Asks the thread to stop; a resolution in progress is cancelled. Does not wait.
  void stop();

 private:
  struct source_state {
    dns_source source;
    std::set<std::string> added;  // URLs this source added and has not drained
    std::string last_error;       // logged once, until the resolution works again
  };
  void run();
  void apply(source_state& s, const dns_answer& answer);

  worker_registry& registry_;
  std::string server_;
  std::chrono::milliseconds interval_;
  std::vector<source_state> sources_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::thread thread_;
};

}  // namespace pdlb
