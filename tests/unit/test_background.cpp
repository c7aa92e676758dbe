// The pure parts of issue 11's background tasks: /get_load answers, DNS source options and worker
// URLs, and how active health checks and passive ejection share a worker's state.
#include "pdlb/background.hpp"
#include "pdlb/dns.hpp"
#include "pdlb/worker.hpp"

#include <gtest/gtest.h>

#include <initializer_list>
#include <vector>

namespace {

using namespace std::chrono_literals;

pdlb::cli_result parse(std::initializer_list<const char*> args) {
  std::vector<const char*> argv{"pdlb"};
  argv.insert(argv.end(), args.begin(), args.end());
  return pdlb::parse_command_line(static_cast<int>(argv.size()), argv.data());
}

std::shared_ptr<pdlb::worker> make_worker(const std::string& url_text) {
  pdlb::worker_url url;
  std::string error;
  EXPECT_TRUE(pdlb::parse_worker_url(url_text, url, error)) << error;
  auto host = std::make_unique<pdlb::upstream_host>(url, 10, std::make_shared<pdlb::conn_limiter>(10),
                                                    pdlb::upstream_options{});
  return std::make_shared<pdlb::worker>(pdlb::worker_role::decode, std::nullopt, std::move(host));
}

TEST(GetLoad, SumsNumReqsOverDataParallelRanks) {
  EXPECT_EQ(pdlb::parse_get_load(R"([{"dp_rank":0,"num_reqs":7,"num_waiting_reqs":2,"num_tokens":90},
                                     {"dp_rank":1,"num_reqs":5,"num_waiting_reqs":0,"num_tokens":10}])"),
            12);
  EXPECT_EQ(pdlb::parse_get_load(R"({"num_reqs":3})"), 3);
}

TEST(GetLoad, OtherShapesAreRejected) {
  for (const char* body : {"", "not json", "[]", "[{}]", R"([{"num_reqs":"7"}])", R"([{"num_reqs":-1}])",
                           R"({"load":3})", "42", R"([{"num_reqs":1},3])"})
    EXPECT_FALSE(pdlb::parse_get_load(body).has_value()) << body;
}

TEST(DnsSource, ParsesNamePortAndBootstrapPort) {
  pdlb::dns_source s;
  std::string error;
  ASSERT_TRUE(pdlb::parse_dns_source("prefill.sglang.svc.cluster.local:30000:8998", true, s, error)) << error;
  EXPECT_TRUE(s.prefill);
  EXPECT_EQ(s.name, "prefill.sglang.svc.cluster.local");
  EXPECT_EQ(s.port, 30000);
  EXPECT_EQ(s.bootstrap_port, 8998);
  ASSERT_TRUE(pdlb::parse_dns_source("prefill.service.consul:30000", true, s, error)) << error;
  EXPECT_FALSE(s.bootstrap_port.has_value());
  ASSERT_TRUE(pdlb::parse_dns_source("decode:30001", false, s, error)) << error;
  EXPECT_FALSE(s.prefill);
  EXPECT_EQ(s.port, 30001);
}

TEST(DnsSource, BadValuesGetClearErrors) {
  pdlb::dns_source s;
  std::string error;
  EXPECT_FALSE(pdlb::parse_dns_source("decode", false, s, error));
  EXPECT_NE(error.find("NAME:PORT"), std::string::npos) << error;
  EXPECT_FALSE(pdlb::parse_dns_source("decode:30001:8998", false, s, error));  // decode has no bootstrap port
  EXPECT_FALSE(pdlb::parse_dns_source("decode:0", false, s, error));
  EXPECT_NE(error.find("bad port"), std::string::npos) << error;
  EXPECT_FALSE(pdlb::parse_dns_source("http://decode:30001", false, s, error));
  EXPECT_FALSE(pdlb::parse_dns_source(":30001", false, s, error));
  EXPECT_FALSE(pdlb::parse_dns_source("p:30000:70000", true, s, error));
  EXPECT_NE(error.find("bootstrap port"), std::string::npos) << error;
}

TEST(DnsSource, WorkerUrlsPutIpv6AddressesInBrackets) {
  EXPECT_EQ(pdlb::dns_worker_url("10.1.2.3", 30000), "http://10.1.2.3:30000");
  EXPECT_EQ(pdlb::dns_worker_url("fd00::1:2", 30001), "http://[fd00::1:2]:30001");
  pdlb::worker_url u;
  std::string error;
  ASSERT_TRUE(pdlb::parse_worker_url(pdlb::dns_worker_url("fd00::1:2", 30001), u, error)) << error;
  EXPECT_EQ(u.host, "fd00::1:2");
  EXPECT_EQ(u.bootstrap_host, "[fd00::1:2]");
}

TEST(CommandLine, BackgroundOptionsParse) {
  auto r = parse({"--health-check-interval", "2.5", "--health-check-path", "/health_generate",
                  "--health-check-timeout", "1", "--health-check-failures", "4", "--health-check-passes", "1",
                  "--prefill-dns", "p.test:30000:8998", "--decode-dns", "d1.test:30001", "--decode-dns",
                  "d2.test:30001", "--dns-interval", "0.5", "--dns-server", "127.0.0.1:5353", "--load-source",
                  "worker", "--load-poll-interval", "0.25"});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  const auto& c = r.cfg;
  EXPECT_EQ(c.health_check_interval, 2500ms);
  EXPECT_EQ(c.health_check_path, "/health_generate");
  EXPECT_EQ(c.health_check_timeout, 1000ms);
  EXPECT_EQ(c.health_check_failures, 4u);
  EXPECT_EQ(c.health_check_passes, 1u);
  ASSERT_EQ(c.dns.size(), 3u);
  EXPECT_TRUE(c.dns[0].prefill);
  EXPECT_EQ(c.dns[2].name, "d2.test");
  EXPECT_EQ(c.dns_interval, 500ms);
  EXPECT_EQ(c.dns_server, "127.0.0.1:5353");
  EXPECT_EQ(c.load, pdlb::load_source::worker);
  EXPECT_EQ(c.load_poll_interval, 250ms);
}

TEST(CommandLine, BackgroundDefaultsAreOffAsTheSglangRouter) {
  auto r = parse({});
  ASSERT_EQ(r.what, pdlb::cli_result::action::run) << r.message;
  EXPECT_EQ(r.cfg.health_check_interval, 0ms);
  EXPECT_EQ(r.cfg.health_check_path, "/health");
  EXPECT_EQ(r.cfg.health_check_timeout, 5s);
  EXPECT_EQ(r.cfg.health_check_failures, 3u);
  EXPECT_EQ(r.cfg.health_check_passes, 2u);
  EXPECT_TRUE(r.cfg.dns.empty());
  EXPECT_EQ(r.cfg.dns_interval, 5s);
  EXPECT_EQ(r.cfg.load, pdlb::load_source::local);
  EXPECT_EQ(r.cfg.load_poll_interval, 1s);
}

TEST(CommandLine, BadBackgroundOptionsExitTwoWithAClearMessage) {
  struct bad {
    std::vector<const char*> args;
    const char* says;
  };
  const std::vector<bad> cases = {
      {{"--health-check-interval", "-1"}, "--health-check-interval"},
      {{"--health-check-timeout", "0"}, "--health-check-timeout"},
      {{"--health-check-path", "health"}, "--health-check-path"},
      {{"--health-check-failures", "0"}, "--health-check-failures"},
      {{"--health-check-passes", "0"}, "--health-check-passes"},
      {{"--decode-dns", "d.test"}, "--decode-dns"},
      {{"--prefill-dns", "p.test:1:2:3"}, "--prefill-dns"},
      {{"--dns-interval", "0"}, "--dns-interval"},
      {{"--dns-server", "dns.example:53"}, "--dns-server"},
      {{"--dns-server", "127.0.0.1:99999"}, "--dns-server"},
      {{"--load-source", "both"}, "--load-source"},
      {{"--load-poll-interval", "0"}, "--load-poll-interval"},
  };
  for (const auto& c : cases) {
    std::vector<const char*> argv{"pdlb"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto r = pdlb::parse_command_line(static_cast<int>(argv.size()), argv.data());
    EXPECT_EQ(r.what, pdlb::cli_result::action::exit) << c.args[0];
    EXPECT_EQ(r.exit_code, 2) << c.args[0];
    EXPECT_NE(r.message.find(c.says), std::string::npos) << r.message;
  }
  for (const char* ok : {"10.0.0.2", "[fd00::2]:53", "fd00::2"}) {
    auto r = parse({"--dns-server", ok});
    EXPECT_EQ(r.what, pdlb::cli_result::action::run) << ok << ": " << r.message;
  }
}

TEST(HealthChecks, FailuresInARowEjectUntilPassesInARowRestore) {
  auto w = make_worker("http://127.0.0.1:9");
  const pdlb::check_policy policy{3, 2};
  const auto now = std::chrono::steady_clock::now();
  EXPECT_EQ(w->record_check(false, policy), pdlb::check_change::none);
  EXPECT_EQ(w->record_check(false, policy), pdlb::check_change::none);
  EXPECT_EQ(w->record_check(true, policy), pdlb::check_change::none);  // a pass breaks the run
  EXPECT_EQ(w->record_check(false, policy), pdlb::check_change::none);
  EXPECT_EQ(w->record_check(false, policy), pdlb::check_change::none);
  EXPECT_EQ(w->state(now), pdlb::worker_state::available);
  EXPECT_EQ(w->record_check(false, policy), pdlb::check_change::ejected);
  EXPECT_EQ(w->state(now), pdlb::worker_state::ejected);
  // However long it takes: time alone does not restore it.
  EXPECT_EQ(w->state(now + 1h), pdlb::worker_state::ejected);
  EXPECT_EQ(w->record_check(true, policy), pdlb::check_change::none);
  EXPECT_EQ(w->record_check(false, policy), pdlb::check_change::none);  // a failure breaks the run
  EXPECT_EQ(w->record_check(true, policy), pdlb::check_change::none);
  EXPECT_EQ(w->state(now), pdlb::worker_state::ejected);
  EXPECT_EQ(w->record_check(true, policy), pdlb::check_change::restored);
  EXPECT_EQ(w->state(now), pdlb::worker_state::available);
  EXPECT_EQ(w->ejections.load(), 1u);
}

TEST(HealthChecks, ServedRequestsDoNotRestoreAWorkerTheChecksEjected) {
  auto w = make_worker("http://127.0.0.1:9");
  const pdlb::check_policy policy{1, 1};
  ASSERT_EQ(w->record_check(false, policy), pdlb::check_change::ejected);
  w->record_success();  // e.g. a request in panic mode
  EXPECT_EQ(w->state(std::chrono::steady_clock::now()), pdlb::worker_state::ejected);
}

TEST(HealthChecks, PassingChecksDoNotEndAPassiveEjection) {
  auto w = make_worker("http://127.0.0.1:9");
  const pdlb::health_policy passive;  // 3 failures, 10 s
  const pdlb::check_policy policy{1, 1};
  const auto now = std::chrono::steady_clock::now();
  ASSERT_TRUE(w->record_failure(pdlb::failure_kind::refused, passive, now));
  EXPECT_EQ(w->record_check(true, policy), pdlb::check_change::none);
  EXPECT_EQ(w->state(now + 1s), pdlb::worker_state::ejected);
  EXPECT_EQ(w->state(now + 11s), pdlb::worker_state::available);
  // Both verdicts at once: the worker is back only when both have let it go.
  ASSERT_TRUE(w->record_failure(pdlb::failure_kind::refused, passive, now + 11s));
  ASSERT_EQ(w->record_check(false, policy), pdlb::check_change::ejected);
  EXPECT_EQ(w->state(now + 40s), pdlb::worker_state::ejected);  // its passive ejection is over
  ASSERT_EQ(w->record_check(true, policy), pdlb::check_change::restored);
  EXPECT_EQ(w->state(now + 40s), pdlb::worker_state::available);
}

TEST(LoadSource, Po2ComparesLocalPlusReportedLoad) {
  std::vector<std::shared_ptr<pdlb::worker>> pool = {make_worker("http://127.0.0.1:9"),
                                                     make_worker("http://127.0.0.1:10")};
  pool[0]->in_flight = 2;     // this pdlb's own requests
  pool[1]->reported_load = 5;  // another pdlb's, as the worker reports them
  std::atomic<std::size_t> rr{0};
  std::mt19937_64 rng(7);
  bool panic = false;
  for (int i = 0; i < 50; ++i)
    EXPECT_EQ(pdlb::pick_worker_for(pool, pdlb::policy_kind::po2, rr, rng, std::chrono::steady_clock::now(), {},
                                    panic),
              pool[0]);
}

}  // namespace

// The failure kind of a 5xx answer: SGLang's words for a failed KV hand-off (prefill.py, decode.py;
// the decode's answer as a user saw it, with the error object SGLang's OpenAI routes send).
TEST(KvHandoffFailure, SglangsTransferAndHandshakeFailuresAreRecognised) {
  EXPECT_TRUE(pdlb::reports_kv_handoff_failure(
      R"({"error":{"type":"Internal Server Error","code":"decode_internal_error","message":"Decode transfer failed )"
      R"(for request rank=0 decode_req.req.rid='9fc6' decode_req.req.bootstrap_room=35 with exception )"
      R"(KVTransferError(bootstrap_room=35): Failed to get kvcache from prefill instance"}})"));
  EXPECT_TRUE(pdlb::reports_kv_handoff_failure(
      "Prefill transfer failed for request rank=4 req.rid='af2f' req.bootstrap_room=69 with exception "
      "KVTransferError(bootstrap_room=69): Decode instance could be dead"));
  EXPECT_TRUE(pdlb::reports_kv_handoff_failure("Decode handshake failed for request rank=0 decode_req.req.rid='x'"));
  EXPECT_FALSE(pdlb::reports_kv_handoff_failure(R"({"error":{"message":"CUDA out of memory"}})"));
  EXPECT_FALSE(pdlb::reports_kv_handoff_failure(""));
}
