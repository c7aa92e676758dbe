// pdlb run in-process through pdlb::service, in front of real pdlb-sim workers: drain, watchdog and
// live reload, observed from the outside (HTTP on loopback, the systemd notification socket).
#include "integration/cluster.hpp"

#include "common/notify_socket.hpp"
#include "pdlb/service.hpp"

#include <boost/asio/post.hpp>
#include <gmock/gmock.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdlib>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

namespace pdlb::test {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

// Workers in TOML, as a config file names them.
std::string workers_toml(const std::vector<std::unique_ptr<sim_worker>>& prefill,
                         const std::vector<std::unique_ptr<sim_worker>>& decode) {
  std::string s;
  for (const auto& p : prefill)
    s += "[[prefill]]\nurl = \"" + p->url() + "\"\nbootstrap_port = " + std::to_string(p->bootstrap_port()) + "\n";
  for (const auto& d : decode) s += "[[decode]]\nurl = \"" + d->url() + "\"\n";
  return s;
}

// A service on 127.0.0.1, port 0, configured by `file` (read again on each reload), running on
// its own thread.
class running_service {
 public:
  running_service(const std::string& file, std::vector<std::string> extra_args = {}) {
    std::vector<std::string> args{"pdlb", "--config", file};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto first = parse_command_line(args);
    if (first.what != cli_result::action::run) throw std::runtime_error(first.message);
    svc_ = std::make_unique<service>(first.cfg, [args] { return parse_command_line(args); });
    svc_->start();
    runner_ = std::thread([this] { exit_code_ = svc_->run(); });
  }
  ~running_service() {
    if (runner_.joinable()) {
      svc_->stop();
      runner_.join();
    }
  }
  service& svc() { return *svc_; }
  std::uint16_t port() const { return svc_->port(); }
  /// Stops and waits for run() to return; returns its exit code.
  int stop_and_wait() {
    svc_->stop();
    runner_.join();
    return exit_code_;
  }
  reload_report reload() {
    std::promise<reload_report> done;
    auto f = done.get_future();
    svc_->reload([&done](const reload_report& r) { done.set_value(r); });
    return f.get();
  }

 private:
  std::unique_ptr<service> svc_;
  std::thread runner_;
  int exit_code_ = -1;
};

std::string base_toml(const std::string& extra = {}) {
  return "host = \"127.0.0.1\"\nport = 0\nthreads = 2\nlog-interval = 0\n" + extra;
}

json generate(bool stream, int tokens) {
  return json{{"text", "in-process"}, {"stream", stream}, {"sampling_params", {{"max_new_tokens", tokens}}}};
}

TEST(Service, RunsInProcessServesRequestsThenDrainsAStreamCleanly) {
  auto c = cluster::start(1, 1);
  c->lb.reset();
  temp_dir dir;
  running_service s(dir.write("pdlb.toml", base_toml("shutdown-grace = 20\n" + workers_toml(c->prefill, c->decode))));
  auto r = http_request(s.port(), "POST", "/generate", generate(false, 3).dump());
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(s.svc().balancer().counters().requests.load(), 1u);

  c->decode[0]->slow_down(0.05);
  http_connection conn(s.port());
  conn.send("POST", "/generate", generate(true, 20).dump());
  ASSERT_EQ(conn.read_header().status, 200u);
  s.svc().stop();
  std::string body;
  while (auto piece = conn.read_body_some()) body += *piece;
  EXPECT_THAT(body, HasSubstr("data: [DONE]"));
  EXPECT_EQ(s.stop_and_wait(), 0);
  EXPECT_EQ(s.svc().server().in_flight(), 0u);
  EXPECT_EQ(s.svc().balancer().counters().in_flight.load(), 0);
  // Nothing listens once drained.
  EXPECT_FALSE(http_request(s.port(), "GET", "/health", {}, {}, 2s).error.empty());
}

// Watchdog pings every 50 ms (WATCHDOG_USEC is twice that); the environment is this test's own
// process (ctest runs each test in a process of its own).
class Watchdog : public ::testing::TestWithParam<std::size_t> {};

TEST_P(Watchdog, PingsStopWhileAnIoThreadIsBlockedAndResumeAfter) {
  notify_socket systemd;
  ::setenv("NOTIFY_SOCKET", systemd.address().c_str(), 1);
  ::setenv("WATCHDOG_USEC", "100000", 1);
  ::unsetenv("WATCHDOG_PID");
  temp_dir dir;
  running_service s(dir.write("pdlb.toml", base_toml()));
  ASSERT_TRUE(systemd.wait_for("READY=1", 5s));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(systemd.wait_for("WATCHDOG=1", 2s)) << "ping " << i;

  // Block one event loop with a task that waits for the test.
  std::promise<void> release;
  std::promise<void> blocked;
  boost::asio::post(s.svc().server().context(GetParam()), [&] {
    blocked.set_value();
    release.get_future().wait();
  });
  blocked.get_future().wait();
  // Pings sent before the block may still be queued, and a round the thread answered just before
  // it may still earn one: take those until the socket has been quiet for 6 ping periods.
  int late = 0;
  while (auto m = systemd.receive(300ms)) {
    EXPECT_EQ(*m, "WATCHDOG=1");
    ASSERT_LE(++late, 4) << "pings go on with I/O thread " << GetParam() << " blocked";
  }
  EXPECT_EQ(systemd.receive(1s), std::nullopt) << "pinged with I/O thread " << GetParam() << " blocked";
  release.set_value();
  EXPECT_TRUE(systemd.wait_for("WATCHDOG=1", 2s));
}

INSTANTIATE_TEST_SUITE_P(Thread, Watchdog, ::testing::Values(std::size_t{0}, std::size_t{1}));

TEST(Reload, ChangedLogLevelAndPolicyTakeEffect) {
  temp_dir dir;
  const auto file = dir.write("pdlb.toml", base_toml("log-level = \"info\"\n"));
  running_service s(file);
  ASSERT_EQ(spdlog::get_level(), spdlog::level::info);
  dir.write("pdlb.toml", base_toml("log-level = \"debug\"\npolicy = \"round_robin\"\n"));
  auto r = s.reload();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_THAT(r.applied, Contains("log-level"));
  EXPECT_THAT(r.applied, Contains("policy"));
  EXPECT_TRUE(r.needs_restart.empty());
  EXPECT_EQ(spdlog::get_level(), spdlog::level::debug);
  // Reloading the same file again changes nothing more.
  auto again = s.reload();
  EXPECT_TRUE(again.ok);
  EXPECT_TRUE(again.applied.empty());
}

TEST(Reload, BrokenFileChangesNothingAndSaysWhereItIsBroken) {
  auto c = cluster::start(1, 1);
  c->lb.reset();
  temp_dir dir;
  const std::string good = base_toml("log-level = \"warn\"\napi-key = \"k1\"\n" + workers_toml(c->prefill, c->decode));
  running_service s(dir.write("pdlb.toml", good));
  spdlog::set_level(spdlog::level::warn);  // what the file says (main would have set it)
  const header_list auth{{"Authorization", "Bearer k1"}};
  ASSERT_EQ(http_request(s.port(), "POST", "/generate", generate(false, 2).dump(), auth).status, 200u);

  // A new key and a new level, but an unknown key on line 5: nothing of it may apply.
  dir.write("pdlb.toml", base_toml("api-key = \"k2\"\nprot = 9\nlog-level = \"debug\"\n"));
  auto r = s.reload();
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.error, HasSubstr("pdlb.toml:6: prot: unknown key"));
  EXPECT_EQ(spdlog::get_level(), spdlog::level::warn);
  EXPECT_EQ(http_request(s.port(), "POST", "/generate", generate(false, 2).dump(), auth).status, 200u);
  EXPECT_EQ(http_request(s.port(), "POST", "/generate", generate(false, 2).dump(), {{"Authorization", "Bearer k2"}}).status,
            401u);
  // A wrong type and a bad URL are refused the same way.
  dir.write("pdlb.toml", base_toml("policy = 2\n"));
  EXPECT_THAT(s.reload().error, HasSubstr("pdlb.toml:5: policy: must be a string"));
  dir.write("pdlb.toml", base_toml("[[decode]]\nurl = \"localhost:30001\"\n"));
  EXPECT_THAT(s.reload().error, HasSubstr("pdlb.toml:6: decode[0].url:"));
  EXPECT_EQ(http_request(s.port(), "POST", "/generate", generate(false, 2).dump(), auth).status, 200u);
}

TEST(Reload, AWorkerListChangeTakesEffectLiveNewWorkersJoinRemovedOnesDrain) {
  auto c = cluster::start(1, 2);
  c->lb.reset();
  temp_dir dir;
  std::vector<std::unique_ptr<sim_worker>> first_decode;
  first_decode.push_back(std::move(c->decode[0]));
  running_service s(dir.write("pdlb.toml", base_toml(workers_toml(c->prefill, first_decode))));
  std::vector<std::unique_ptr<sim_worker>> second_decode;
  second_decode.push_back(std::move(c->decode[1]));
  dir.write("pdlb.toml", base_toml(workers_toml(c->prefill, second_decode)));
  auto r = s.reload();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_THAT(r.applied, Contains("decode"));
  ASSERT_EQ(http_request(s.port(), "POST", "/generate", generate(false, 2).dump()).status, 200u);
  EXPECT_EQ(first_decode[0]->stats()["received"], 0) << "a removed worker got a new request";
  EXPECT_EQ(second_decode[0]->stats()["received"], 1);
}

TEST(Reload, TimeoutsAndLimitsApplyToTheNextRequests) {
  auto c = cluster::start(1, 1);
  c->lb.reset();
  temp_dir dir;
  const std::string workers = workers_toml(c->prefill, c->decode);
  running_service s(dir.write("pdlb.toml", base_toml(workers)));
  const std::string body = generate(false, 2).dump();
  ASSERT_EQ(http_request(s.port(), "POST", "/generate", body).status, 200u);

  // Top-level keys before the worker tables (after them they would belong to the last table).
  // (max-body-size also bounds the workers' answers, a few hundred bytes here.)
  dir.write("pdlb.toml", base_toml("timeout = 1\nmax-body-size = 4000\nconnector-limit = 4\n"
                                   "connector-limit-per-host = 2\nclient-header-timeout = 30\n" + workers));
  auto r = s.reload();
  ASSERT_TRUE(r.ok) << r.error;
  for (const char* name : {"timeout", "max-body-size", "connector-limit", "connector-limit-per-host",
                           "client-header-timeout"})
    EXPECT_THAT(r.applied, Contains(name));
  EXPECT_TRUE(r.needs_restart.empty()) << r.needs_restart.front();

  // The new connector limits still serve requests (a PD request takes two connections at once).
  EXPECT_EQ(http_request(s.port(), "POST", "/generate", body).status, 200u);
  // A body over the new limit: 413.
  auto big = http_request(s.port(), "POST", "/generate", body + std::string(4000, ' '));
  EXPECT_EQ(big.status, 413u) << big.body;
  // A stalled decode: cut after the new one-second timeout, not the 600 s it was.
  post_json(*c->decode[0], "/sim/fault", {{"stall", true}});
  const auto t0 = std::chrono::steady_clock::now();
  auto stalled = http_request(s.port(), "POST", "/generate", body, {}, 30s);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(stalled.status, 504u) << stalled.body;
  EXPECT_LT(took, 10s);
  EXPECT_EQ(s.stop_and_wait(), 0);
}

TEST(Reload, RequestsInFlightAreNotDisturbed) {
  auto c = cluster::start(1, 1);
  c->lb.reset();
  temp_dir dir;
  const std::string workers = workers_toml(c->prefill, c->decode);
  const auto file = dir.write("pdlb.toml", base_toml(workers));
  running_service s(file);
  c->decode[0]->slow_down(0.02);
  // Streams and plain requests on both threads (connections go to the threads in turn).
  constexpr int streams = 8;
  std::vector<std::unique_ptr<http_connection>> conns;
  for (int i = 0; i < streams; ++i) {
    conns.push_back(std::make_unique<http_connection>(s.port()));
    conns.back()->send("POST", "/generate", generate(i % 2 == 0, 25).dump());
  }
  ASSERT_TRUE(sim_wait(*c->decode[0], "min_received=" + std::to_string(streams), 10s));
  const char* policies[] = {"po2", "round_robin", "random"};
  for (const char* policy : policies) {
    // Top-level keys before the worker tables (after them they would belong to the last table).
    dir.write("pdlb.toml", base_toml("policy = \"" + std::string(policy) + "\"\nlog-level = \"info\"\n" + workers));
    auto r = s.reload();
    ASSERT_TRUE(r.ok) << r.error;
  }
  for (int i = 0; i < streams; ++i) {
    auto resp = conns[i]->read_response();
    EXPECT_EQ(resp.status, 200u) << i;
    EXPECT_TRUE(resp.complete) << i;
    if (i % 2 == 0) {
      EXPECT_THAT(resp.body, HasSubstr("data: [DONE]")) << i;
    }
  }
  EXPECT_EQ(s.svc().balancer().counters().errors.load(), 0u);
  EXPECT_EQ(s.stop_and_wait(), 0);
}

// The real binary under a fake systemd: the notification socket, signals, and a config file.
class SystemdNotify : public ::testing::TestWithParam<bool> {};

TEST_P(SystemdNotify, ReadyThenReloadingAndReadyOnSighupThenStoppingOnSigterm) {
  notify_socket systemd(GetParam());
  temp_dir dir;
  const auto file = dir.write("pdlb.toml", base_toml("log-level = \"info\"\n"));
  child_process lb({PDLB_BIN, "--config", file}, {{"NOTIFY_SOCKET", systemd.address()}});
  auto ready = systemd.wait_for("READY=1", 20s);
  ASSERT_TRUE(ready) << lb.output();
  const std::regex serving(R"(STATUS=serving on 127\.0\.0\.1:(\d+) with 0 prefill and 0 decode worker\(s\))");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(*ready, m, serving)) << *ready;
  const auto port = static_cast<std::uint16_t>(std::stoi(m[1]));
  EXPECT_EQ(http_request(port, "GET", "/health").status, 200u);

  dir.write("pdlb.toml", base_toml("log-level = \"debug\"\n"));
  lb.signal(SIGHUP);
  auto reloading = systemd.receive(10s);
  ASSERT_TRUE(reloading) << lb.output();
  EXPECT_TRUE(std::regex_search(*reloading, std::regex(R"(^RELOADING=1\nMONOTONIC_USEC=\d+$)"))) << *reloading;
  auto again = systemd.receive(10s);
  ASSERT_TRUE(again);
  EXPECT_THAT(*again, HasSubstr("READY=1"));
  EXPECT_THAT(*again, ::testing::Not(HasSubstr("failed")));

  // A broken file: refused, said in STATUS=, and pdlb goes on serving.
  dir.write("pdlb.toml", base_toml("max-body-size = \"big\"\n"));
  lb.signal(SIGHUP);
  ASSERT_TRUE(systemd.wait_for("RELOADING=1", 10s));
  auto refused = systemd.receive(10s);
  ASSERT_TRUE(refused);
  EXPECT_THAT(*refused, HasSubstr("READY=1\nSTATUS="));
  EXPECT_THAT(*refused, HasSubstr("last reload failed"));
  EXPECT_THAT(*refused, HasSubstr("pdlb.toml:5: max-body-size: must be an integer"));
  EXPECT_EQ(http_request(port, "GET", "/health").status, 200u);

  lb.signal(SIGTERM);
  auto stopping = systemd.wait_for("STOPPING=1", 10s);
  ASSERT_TRUE(stopping) << lb.output();
  EXPECT_THAT(*stopping, HasSubstr("STATUS=draining"));
  auto rc = lb.wait_exit(10s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0);
}

INSTANTIATE_TEST_SUITE_P(Socket, SystemdNotify, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Abstract" : "Path"; });

TEST(SystemdNotify, WatchdogPidOfAnotherProcessMeansNoWatchdog) {
  ::setenv("WATCHDOG_USEC", "100000", 1);
  ::setenv("NOTIFY_SOCKET", "@pdlb-test-unused", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  EXPECT_EQ(systemd_notifier::from_environment().watchdog_timeout(), std::chrono::microseconds(100000));
  ::setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
  EXPECT_EQ(systemd_notifier::from_environment().watchdog_timeout(), std::chrono::microseconds(0));
  ::unsetenv("WATCHDOG_PID");
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_FALSE(systemd_notifier::from_environment().enabled());
}

// Logs for journald and log shippers.
TEST(Logs, NoColourCodesWhenStderrIsNotATerminal) {
  auto lb = pdlb_process::start({"--log-level", "debug"});
  http_request(lb->port(), "GET", "/nope");
  lb->process().signal(SIGTERM);
  ASSERT_TRUE(lb->process().wait_exit(10s));
  const std::string out = lb->process().output();
  EXPECT_THAT(out, HasSubstr("[warning]"));
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
}

TEST(Logs, JsonFormatWritesOneObjectPerLine) {
  auto lb = pdlb_process::start({"--log-format", "json"});
  lb->process().signal(SIGTERM);
  ASSERT_TRUE(lb->process().wait_exit(10s));
  std::istringstream lines(lb->process().output());
  int objects = 0;
  bool saw_listening = false;
  for (std::string line; std::getline(lines, line);) {
    auto j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "not JSON: " << line;
    ASSERT_TRUE(j.is_object()) << line;
    for (const char* key : {"time", "level", "message"}) EXPECT_TRUE(j.contains(key) && j[key].is_string()) << line;
    EXPECT_TRUE(std::regex_match(j["time"].get<std::string>(), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")))
        << line;
    saw_listening = saw_listening || j["message"].get<std::string>().find("listening on") != std::string::npos;
    ++objects;
  }
  EXPECT_GE(objects, 3);
  EXPECT_TRUE(saw_listening);
}

}  // namespace
}  // namespace pdlb::test
