#include "pdlb/policy.hpp"

namespace pdlb {

std::mt19937_64 seeded_rng() {
  std::random_device rd;
  std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
  return std::mt19937_64(seq);
}

std::mt19937_64& thread_rng() {
  thread_local std::mt19937_64 rng = seeded_rng();
  return rng;
}

std::uint64_t random_room(std::mt19937_64& rng) {
  std::uniform_int_distribution<std::uint64_t> d(0, (std::uint64_t{1} << 63) - 1);
  return d(rng);
}

}  // namespace pdlb
