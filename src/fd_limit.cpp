#include "pdlb/fd_limit.hpp"

#include <sys/resource.h>

namespace pdlb {

fd_limit_change raise_fd_limit() {
  fd_limit_change change;
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return change;
  change.before = change.after = lim.rlim_cur;
  if (lim.rlim_cur >= lim.rlim_max) return change;
  lim.rlim_cur = lim.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &lim) == 0)
    change.after = lim.rlim_cur;
  else
    change.failed = true;
  return change;
}

}  // namespace pdlb
