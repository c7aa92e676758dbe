// Starting the real pdlb binary for integration tests.
#pragma once

#include "common/process.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pdlb::test {

class pdlb_process {
 public:
  /// Starts build's pdlb on 127.0.0.1, port 0, with `args` added; waits until it listens.
  static std::unique_ptr<pdlb_process> start(std::vector<std::string> args);
  std::uint16_t port() const { return port_; }
  /// The --metrics-port listener's port, as the ready file says (0 if it is off).
  std::uint16_t metrics_port() const { return metrics_port_; }
  child_process& process() { return *proc_; }

 private:
  std::unique_ptr<child_process> proc_;
  std::uint16_t port_ = 0;
  std::uint16_t metrics_port_ = 0;
};

}  // namespace pdlb::test
