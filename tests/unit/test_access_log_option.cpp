// --access-log: a path that cannot be opened is refused at start-up, with the reason.
#include "pdlb/config.hpp"

#include <gtest/gtest.h>

namespace pdlb {
namespace {

TEST(AccessLogOption, AnUnopenablePathIsRefusedWithTheReason) {
  const char* argv[] = {"pdlb", "--access-log", "/nonexistent-dir-for-pdlb/access.log"};
  auto r = parse_command_line(3, argv);
  EXPECT_EQ(r.what, cli_result::action::exit);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("--access-log: cannot open /nonexistent-dir-for-pdlb/access.log"), std::string::npos)
      << r.message;
}

TEST(AccessLogOption, OffByDefaultAndDashMeansStdout) {
  const char* plain[] = {"pdlb"};
  EXPECT_EQ(parse_command_line(1, plain).cfg.access_log, "");
  const char* dash[] = {"pdlb", "--access-log", "-"};
  auto r = parse_command_line(3, dash);
  EXPECT_EQ(r.what, cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.access_log, "-");
}

}  // namespace
}  // namespace pdlb
