// Raising the open-file limit, for pdlb, pdlb-sim and pdlb-bench alike: many concurrent streams need
// many descriptors (pdlb holds a client socket and two upstream sockets for each).
#pragma once

#include <cstdint>

namespace pdlb {

/// What raise_fd_limit() did.
struct fd_limit_change {
  std::uint64_t before = 0;  ///< The soft limit found (0 if it could not be read).
  std::uint64_t after = 0;   ///< The soft limit now.
  bool failed = false;       ///< setrlimit() refused to raise it.
};

/// Raises the soft RLIMIT_NOFILE to the hard limit (what minilb does too); says what it did.
fd_limit_change raise_fd_limit();

}  // namespace pdlb
