#include "pdlb/config.hpp"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace {

pdlb::cli_result parse(std::initializer_list<const char*> args) {
  std::vector<const char*> argv{"pdlb"};
  argv.insert(argv.end(), args.begin(), args.end());
  return pdlb::parse_command_line(static_cast<int>(argv.size()), argv.data());
}

TEST(WorkerUrl, SplitsHostPortAndPrefix) {
  pdlb::worker_url u;
  std::string err;
  ASSERT_TRUE(pdlb::parse_worker_url("http://10.0.0.1:30000/sglang/", u, err)) << err;
  EXPECT_EQ(u.host, "10.0.0.1");
  EXPECT_EQ(u.port, 30000);
  EXPECT_EQ(u.path_prefix, "/sglang");
  EXPECT_EQ(u.host_header, "10.0.0.1:30000");
  EXPECT_EQ(u.bootstrap_host, "10.0.0.1");
  EXPECT_EQ(u.url, "http://10.0.0.1:30000/sglang");
}

TEST(WorkerUrl, DefaultsToPort80AndStripsTrailingSlash) {
  pdlb::worker_url u;
  std::string err;
  ASSERT_TRUE(pdlb::parse_worker_url("http://Decode-Host/", u, err)) << err;
  EXPECT_EQ(u.port, 80);
  EXPECT_EQ(u.host, "decode-host");
  EXPECT_EQ(u.path_prefix, "");
  EXPECT_EQ(u.url, "http://Decode-Host");
}

TEST(WorkerUrl, Ipv6LiteralKeepsBracketsInBootstrapHostOnly) {
  pdlb::worker_url u;
  std::string err;
  ASSERT_TRUE(pdlb::parse_worker_url("http://[::1]:30000", u, err)) << err;
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.bootstrap_host, "[::1]");
  EXPECT_EQ(u.host_header, "[::1]:30000");
  EXPECT_EQ(u.port, 30000);
}

TEST(WorkerUrl, RejectsUnusableUrls) {
  pdlb::worker_url u;
  std::string err;
  for (const char* bad : {"10.0.0.1:30000", "https://a:1", "http://:80", "http://a:99999", "http://a:x",
                          "http://[::1", "http://::1:80", "http://a:1?x=1", "http://u@a:1", "http://a:"}) {
    EXPECT_FALSE(pdlb::parse_worker_url(bad, u, err)) << bad;
    EXPECT_FALSE(err.empty()) << bad;
  }
}

TEST(CommandLine, DefaultsMatchMinilb) {
  auto r = parse({});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.host, "0.0.0.0");
  EXPECT_EQ(r.cfg.port, 8000);
  EXPECT_EQ(r.cfg.policy, pdlb::policy_kind::random);
  EXPECT_EQ(r.cfg.log_interval, 5);
  EXPECT_EQ(r.cfg.timeout, std::chrono::seconds(600));
  EXPECT_EQ(r.cfg.connector_limit, 10000u);
  EXPECT_EQ(r.cfg.connector_limit_per_host, 10000u);
  EXPECT_EQ(r.cfg.max_body_size, 512ull * 1024 * 1024);
  EXPECT_GE(r.cfg.threads, 1u);
}

TEST(CommandLine, MinilbFormWithOneBootstrapPortForAll) {
  auto r = parse({"--prefill", "http://p1:30000", "http://p2:30000", "--decode", "http://d1:30001",
                  "--prefill-bootstrap-ports", "8998", "--policy", "po2", "--timeout", "5"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  ASSERT_EQ(r.cfg.prefill.size(), 2u);
  EXPECT_EQ(r.cfg.prefill[0].bootstrap_port, 8998);
  EXPECT_EQ(r.cfg.prefill[1].bootstrap_port, 8998);
  ASSERT_EQ(r.cfg.decode.size(), 1u);
  EXPECT_EQ(r.cfg.decode[0].host, "d1");
  EXPECT_EQ(r.cfg.policy, pdlb::policy_kind::po2);
  EXPECT_EQ(r.cfg.timeout, std::chrono::seconds(5));
}

TEST(CommandLine, OneBootstrapPortPerPrefill) {
  auto r = parse({"--prefill", "http://p1:1", "http://p2:2", "--prefill-bootstrap-ports", "8998", "8999"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.prefill[0].bootstrap_port, 8998);
  EXPECT_EQ(r.cfg.prefill[1].bootstrap_port, 8999);
}

TEST(CommandLine, NoBootstrapPortsMeansNull) {
  auto r = parse({"--prefill", "http://p1:1"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_FALSE(r.cfg.prefill[0].bootstrap_port.has_value());
}

TEST(CommandLine, BootstrapPortCountMismatchIsAStartupError) {
  auto r = parse({"--prefill", "http://p1:1", "http://p2:2", "http://p3:3", "--prefill-bootstrap-ports",
                  "8998", "8999"});
  EXPECT_EQ(r.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("must match"), std::string::npos) << r.message;
}

TEST(CommandLine, RouterFormPortOrNoneAfterEachUrl) {
  auto r = parse({"--prefill", "http://p1:1", "8998", "--prefill", "http://p2:2", "none", "--prefill",
                  "http://p3:3", "--decode", "http://d:4"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  ASSERT_EQ(r.cfg.prefill.size(), 3u);
  EXPECT_EQ(r.cfg.prefill[0].bootstrap_port, 8998);
  EXPECT_FALSE(r.cfg.prefill[1].bootstrap_port.has_value());
  EXPECT_FALSE(r.cfg.prefill[2].bootstrap_port.has_value());
}

TEST(CommandLine, RouterFormAndBootstrapPortsFlagTogetherIsAnError) {
  auto r = parse({"--prefill", "http://p1:1", "8998", "--prefill-bootstrap-ports", "9000"});
  EXPECT_EQ(r.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(r.exit_code, 2);
}

TEST(CommandLine, PortBeforeAnyUrlIsAnError) {
  auto r = parse({"--prefill", "8998", "http://p1:1"});
  EXPECT_EQ(r.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(r.exit_code, 2);
}

TEST(CommandLine, UnknownPolicyIsAnError) {
  auto r = parse({"--policy", "cache_aware"});
  EXPECT_EQ(r.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(r.exit_code, 2);
}

TEST(CommandLine, RoundRobinAndThreadsAccepted) {
  auto r = parse({"--policy", "round_robin", "--threads", "3"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.policy, pdlb::policy_kind::round_robin);
  EXPECT_EQ(r.cfg.threads, 3u);
}

TEST(CommandLine, RustLbAcceptedAsAFlag) {
  auto r = parse({"--rust-lb", "--port", "9000"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_TRUE(r.cfg.rust_lb);
  EXPECT_EQ(r.cfg.port, 9000);
}

TEST(CommandLine, HelpAndVersionExitZero) {
  auto h = parse({"--help"});
  EXPECT_EQ(h.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.message.find("--prefill-bootstrap-ports"), std::string::npos);
  auto v = parse({"--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_NE(v.message.find(PDLB_VERSION), std::string::npos);
}

TEST(CommandLine, BadWorkerUrlIsAnError) {
  auto r = parse({"--decode", "localhost:30001"});
  EXPECT_EQ(r.what, pdlb::cli_result::action::exit);
  EXPECT_NE(r.message.find("--decode"), std::string::npos);
}

TEST(CommandLine, NonPositiveTimeoutIsAnError) {
  EXPECT_EQ(parse({"--timeout", "0"}).exit_code, 2);
  EXPECT_EQ(parse({"--timeout", "-3"}).exit_code, 2);
}

}  // namespace

namespace {
TEST(CommandLine, RepeatedScalarOptionTakesTheLastValueAsArgparseDoes) {
  std::vector<const char*> argv{"pdlb", "--port", "1", "--port", "2", "--log-interval", "0", "--log-interval", "1"};
  auto r = pdlb::parse_command_line(static_cast<int>(argv.size()), argv.data());
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.port, 2);
  EXPECT_EQ(r.cfg.log_interval, 1);
}
}  // namespace
