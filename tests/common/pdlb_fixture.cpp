#include "common/pdlb_fixture.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <regex>
#include <stdexcept>

namespace pdlb::test {

std::unique_ptr<pdlb_process> pdlb_process::start(std::vector<std::string> args) {
  std::vector<std::string> argv{PDLB_BIN, "--host", "127.0.0.1", "--port", "0"};
  if (std::find(args.begin(), args.end(), "--log-interval") == args.end()) {
    argv.push_back("--log-interval");
    argv.push_back("0");
  }
  argv.insert(argv.end(), args.begin(), args.end());
  auto p = std::make_unique<pdlb_process>();
  p->proc_ = std::make_unique<child_process>(argv);
  static const std::regex ready(R"(listening on http://[^ ]*:(\d+))");
  auto m = p->proc_->wait_for_line(ready, std::chrono::seconds(20));
  if (!m) throw std::runtime_error("pdlb did not start:\n" + p->proc_->output());
  p->port_ = static_cast<std::uint16_t>(std::stoi((*m)[1]));
  return p;
}

}  // namespace pdlb::test
