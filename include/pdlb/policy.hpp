// Picking a worker from a pool: random, power of two choices on requests in flight, round robin.
#pragma once

#include "pdlb/config.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <random>

namespace pdlb {

/// A random engine seeded from std::random_device (256 bits).
std::mt19937_64 seeded_rng();

/// The random engine of the calling thread (seeded_rng()), for code without a thread_context.
std::mt19937_64& thread_rng();

/// A uniform bootstrap room in [0, 2^63 - 1], as minilb's random.randint(0, 2**63 - 1).
std::uint64_t random_room(std::mt19937_64& rng);

/// Picks one of `n` (> 0) workers. `load(i)` gives worker i's requests in flight (po2 only);
/// `rr` is the pool's round-robin counter.
template <class Load>
std::size_t pick_worker(policy_kind policy, std::size_t n, Load&& load, std::mt19937_64& rng,
                        std::atomic<std::size_t>& rr) {
  if (n <= 1) return 0;
  switch (policy) {
    case policy_kind::round_robin:
      return rr.fetch_add(1, std::memory_order_relaxed) % n;
    case policy_kind::po2: {
      std::uniform_int_distribution<std::size_t> first(0, n - 1);
      std::uniform_int_distribution<std::size_t> other(0, n - 2);
      std::size_t a = first(rng);
      std::size_t b = other(rng);
      if (b >= a) ++b;  // two distinct candidates
      return load(b) < load(a) ? b : a;
    }
    case policy_kind::random:
    default: {
      std::uniform_int_distribution<std::size_t> d(0, n - 1);
      return d(rng);
    }
  }
}

}  // namespace pdlb
