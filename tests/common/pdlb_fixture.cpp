#include "common/pdlb_fixture.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

namespace pdlb::test {

std::unique_ptr<pdlb_process> pdlb_process::start(std::vector<std::string> args) {
  std::vector<std::string> argv{PDLB_BIN, "--host", "127.0.0.1", "--port", "0"};
  if (std::find(args.begin(), args.end(), "--log-interval") == args.end()) {
    argv.push_back("--log-interval");
    argv.push_back("0");
  }
  // Requests a test leaves in flight (a stalled worker) must not hold up teardown's SIGTERM; the
  // tests of draining set their own grace period.
  if (std::find(args.begin(), args.end(), "--shutdown-grace") == args.end()) {
    argv.push_back("--shutdown-grace");
    argv.push_back("0");
  }
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string ready_file = new_ready_file_path();
  argv.push_back("--ready-file");
  argv.push_back(ready_file);
  auto p = std::make_unique<pdlb_process>();
  p->proc_ = std::make_unique<child_process>(argv);
  auto ready = wait_for_ready_file(*p->proc_, ready_file, std::chrono::seconds(20));
  if (!ready) throw std::runtime_error("pdlb did not start:\n" + p->proc_->output());
  p->port_ = ready->port;
  p->metrics_port_ = ready->metrics_port.value_or(0);
  return p;
}

}  // namespace pdlb::test
