#include "pdlb/config.hpp"

#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <regex>
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

TEST(CommandLine, AConnectorLimitBelowTwoIsAStartupErrorSayingWhy) {
  // A PD request holds a prefill and a decode connection at once: with one, none could ever run.
  auto r = parse({"--connector-limit", "1"});
  EXPECT_EQ(r.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("--connector-limit must be at least 2"), std::string::npos) << r.message;
  EXPECT_EQ(parse({"--connector-limit", "2"}).what, pdlb::cli_result::action::run);
  EXPECT_EQ(parse({"--connector-limit-per-host", "0"}).exit_code, 2);
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

// --config FILE (TOML).
namespace {

class ConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / "pdlb-config-XXXXXX").string();
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& content) {
    std::string path = dir_ + "/pdlb.toml";
    std::ofstream(path) << content;
    return path;
  }
  pdlb::cli_result parse_with(const std::string& content, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"pdlb", "--config", write(content)};
    args.insert(args.end(), extra.begin(), extra.end());
    return pdlb::parse_command_line(args);
  }
  std::string dir_;
};

TEST_F(ConfigFile, OptionsByLongNameAndWorkerTables) {
  auto r = parse_with(R"(
port = 9001
policy = "po2"
timeout = 2.5
connect-timeout = 3
max-body-size = 1024
rust-lb = true
log-format = "json"
[[prefill]]
url = "http://p1:30000"
bootstrap_port = 8998
[[prefill]]
url = "http://p2:30000"
bootstrap_port = "none"
[[decode]]
url = "http://d1:30001"
)");
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.port, 9001);
  EXPECT_EQ(r.cfg.policy, pdlb::policy_kind::po2);
  EXPECT_EQ(r.cfg.timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(r.cfg.connect_timeout, std::chrono::seconds(3));
  EXPECT_EQ(r.cfg.max_body_size, 1024u);
  EXPECT_TRUE(r.cfg.rust_lb);
  EXPECT_EQ(r.cfg.log_format, "json");
  ASSERT_EQ(r.cfg.prefill.size(), 2u);
  EXPECT_EQ(r.cfg.prefill[0].url.url, "http://p1:30000");
  EXPECT_EQ(r.cfg.prefill[0].bootstrap_port, 8998);
  EXPECT_FALSE(r.cfg.prefill[1].bootstrap_port.has_value());
  ASSERT_EQ(r.cfg.decode.size(), 1u);
  EXPECT_EQ(r.cfg.decode[0].host, "d1");
}

TEST_F(ConfigFile, CommandLineWinsOverTheFile) {
  auto r = parse_with("port = 9001\npolicy = \"po2\"\n[[decode]]\nurl = \"http://file:1\"\n",
                      {"--port", "9002", "--decode", "http://cli:2"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.port, 9002);
  EXPECT_EQ(r.cfg.policy, pdlb::policy_kind::po2);
  ASSERT_EQ(r.cfg.decode.size(), 1u);
  EXPECT_EQ(r.cfg.decode[0].host, "cli");
}

TEST_F(ConfigFile, BootstrapPortsFlagOverridesTheTables) {
  auto r = parse_with("[[prefill]]\nurl = \"http://p:1\"\nbootstrap_port = 8998\n", {"--prefill-bootstrap-ports", "9000"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.prefill[0].bootstrap_port, 9000);
  auto both = parse_with("prefill-bootstrap-ports = [9000]\n[[prefill]]\nurl = \"http://p:1\"\nbootstrap_port = 8998\n");
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.message.find("not both"), std::string::npos) << both.message;
}

TEST_F(ConfigFile, UnknownKeyNamesFileLineAndKey) {
  auto r = parse_with("port = 1\n\nprot = 2\n");
  EXPECT_EQ(r.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("pdlb.toml:3: prot: unknown key"), std::string::npos) << r.message;
  auto in_table = parse_with("[[decode]]\nurl = \"http://d:1\"\nbootstrap_port = 1\n");
  EXPECT_NE(in_table.message.find("pdlb.toml:3: decode[0].bootstrap_port: unknown key"), std::string::npos)
      << in_table.message;
}

TEST_F(ConfigFile, WrongTypeNamesFileLineAndKey) {
  auto r = parse_with("\nport = \"8000\"\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("pdlb.toml:2: port: must be an integer"), std::string::npos) << r.message;
  EXPECT_NE(parse_with("timeout = \"5\"\n").message.find("timeout: must be a number"), std::string::npos);
  EXPECT_NE(parse_with("rust-lb = 1\n").message.find("rust-lb: must be true or false"), std::string::npos);
  EXPECT_NE(parse_with("decode = \"http://d:1\"\n").message.find("decode: must be an array of tables"),
            std::string::npos);
}

TEST_F(ConfigFile, ValueOutOfRangeOrNotAllowedNamesTheKey) {
  auto r = parse_with("port = 70000\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("pdlb.toml:1: port:"), std::string::npos) << r.message;
  auto p = parse_with("policy = \"cache_aware\"\n");
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(p.message.find("pdlb.toml:1: policy:"), std::string::npos) << p.message;
  auto t = parse_with("timeout = 0\n");
  EXPECT_EQ(t.exit_code, 2);
}

TEST_F(ConfigFile, BadWorkerUrlNamesFileLineAndKey) {
  auto r = parse_with("[[prefill]]\nurl = \"https://p:1\"\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("pdlb.toml:2: prefill[0].url: worker URL 'https://p:1'"), std::string::npos) << r.message;
  auto no_url = parse_with("[[decode]]\n");
  EXPECT_NE(no_url.message.find("decode[0]: has no url"), std::string::npos) << no_url.message;
}

TEST_F(ConfigFile, SyntaxErrorAndMissingFileAreStartupErrors) {
  auto r = parse_with("port = = 1\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.message.find("pdlb.toml:1:"), std::string::npos) << r.message;
  auto missing = pdlb::parse_command_line(std::vector<std::string>{"pdlb", "--config", dir_ + "/nope.toml"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.message.find("nope.toml"), std::string::npos) << missing.message;
}

TEST_F(ConfigFile, CheckExitsZeroForAGoodFileAndTwoForABadOne) {
  auto good = parse_with("port = 9001\n", {"--check"});
  EXPECT_EQ(good.what, pdlb::cli_result::action::exit);
  EXPECT_EQ(good.exit_code, 0);
  EXPECT_NE(good.message.find("configuration OK"), std::string::npos) << good.message;
  auto bad = parse_with("port = \"x\"\n", {"--check"});
  EXPECT_EQ(bad.exit_code, 2);
}

TEST_F(ConfigFile, EnvironmentWinsOverTheFile) {
  ::setenv("PDLB_API_KEY", "from-env", 1);
  auto r = parse_with("api-key = \"from-file\"\nadmin-api-key = \"admin-file\"\n");
  ::unsetenv("PDLB_API_KEY");
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.api_key, "from-env");
  EXPECT_EQ(r.cfg.admin_api_key, "admin-file");
}

// configs/pdlb.toml documents every option with its default: parsed, it must give the defaults, and
// every long option of --help (but --config, --help, --version) must appear in it as a key.
TEST(ShippedConfig, SetsEveryOptionToItsDefault) {
  const std::string path = std::string(PDLB_SOURCE_DIR) + "/configs/pdlb.toml";
  auto shipped = pdlb::parse_command_line(std::vector<std::string>{"pdlb", "--config", path});
  ASSERT_EQ(shipped.what, pdlb::cli_result::action::run) << shipped.message;
  auto defaults = parse({});
  const auto& a = shipped.cfg;
  const auto& b = defaults.cfg;
  EXPECT_EQ(a.host, b.host);
  EXPECT_EQ(a.port, b.port);
  EXPECT_EQ(a.policy, b.policy);
  EXPECT_EQ(a.log_interval, b.log_interval);
  EXPECT_EQ(a.timeout, b.timeout);
  EXPECT_EQ(a.connector_limit, b.connector_limit);
  EXPECT_EQ(a.connector_limit_per_host, b.connector_limit_per_host);
  EXPECT_EQ(a.rust_lb, b.rust_lb);
  EXPECT_EQ(a.max_body_size, b.max_body_size);
  EXPECT_EQ(a.connect_timeout, b.connect_timeout);
  EXPECT_EQ(a.client_header_timeout, b.client_header_timeout);
  EXPECT_EQ(a.client_body_timeout, b.client_body_timeout);
  EXPECT_EQ(a.upstream_idle_timeout, b.upstream_idle_timeout);
  EXPECT_EQ(a.shutdown_grace, b.shutdown_grace);
  EXPECT_EQ(a.log_level, b.log_level);
  EXPECT_EQ(a.log_format, b.log_format);
  EXPECT_EQ(a.api_key, b.api_key);
  EXPECT_EQ(a.admin_api_key, b.admin_api_key);

  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::regex option(R"(\s(--[a-z][a-z-]+))");
  const std::string help = parse({"--help"}).message;
  int checked = 0;
  for (std::sregex_iterator it(help.begin(), help.end(), option), end; it != end; ++it) {
    const std::string key = (*it)[1].str().substr(2);
    if (key == "config" || key == "check" || key == "help" || key == "version") continue;
    const std::string as_key = key == "prefill" || key == "decode" ? "[[" + key + "]]" : key + " =";
    EXPECT_NE(text.find(as_key), std::string::npos) << "configs/pdlb.toml does not document " << key;
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

}  // namespace
