// pdlb: parses options and runs the service; everything else lives in the library.
#include "pdlb/config.hpp"
#include "pdlb/logging.hpp"
#include "pdlb/service.hpp"

#include <spdlog/spdlog.h>

#include <csignal>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  // Kept, so that a reload (SIGHUP) parses the same command line over the file read again.
  const std::vector<std::string> args(argv, argv + argc);
  auto cli = pdlb::parse_command_line(args);
  if (cli.what == pdlb::cli_result::action::exit) {
    (cli.exit_code == 0 ? std::cout : std::cerr) << cli.message;
    return cli.exit_code;
  }
  pdlb::setup_logging("pdlb", cli.cfg.log_format, cli.cfg.log_level);
  std::signal(SIGPIPE, SIG_IGN);

  pdlb::service svc(std::move(cli.cfg), [args] { return pdlb::parse_command_line(args); });
  try {
    svc.start();
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  return svc.run();
}
