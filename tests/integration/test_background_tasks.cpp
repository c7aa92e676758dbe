// pdlb's background tasks against real processes on loopback: active health checks, po2 on the
// load workers report (/get_load), DNS discovery from a real dnsmasq, and membership changes of
// every kind under 200 concurrent streams.
#include "integration/cluster.hpp"
#include "integration/dns_server.hpp"
#include "common/notify_socket.hpp"

#include <gmock/gmock.h>

#include <csignal>
#include <cstdio>
#include <regex>
#include <thread>

namespace pdlb::test {
namespace {

using namespace std::chrono_literals;

// This worker's entry in GET /workers (null if it is not listed).
json listed(std::uint16_t lb_port, const std::string& url) {
  auto list = parse_json(http_request(lb_port, "GET", "/workers").body);
  for (auto& w : list["workers"])
    if (w["url"] == url) return w;
  return json();
}

// Waits until `ok(entry)` holds for the worker's /workers entry (null when not listed). pdlb acts
// on its own timers here (checks, polls, resolutions), so this polls its status route, bounded.
template <class Ok>
json await_entry(std::uint16_t lb_port, const std::string& url, Ok ok, std::chrono::milliseconds limit = 10s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  json entry = listed(lb_port, url);
  while (!ok(entry) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(20ms);
    entry = listed(lb_port, url);
  }
  EXPECT_TRUE(ok(entry)) << url << " never got there; last entry: " << entry.dump();
  return entry;
}

bool is_state(const json& e, const char* state) { return e.is_object() && e["state"] == state; }

// Sends `n` sequential small /generate requests; returns how many failed.
int failed_of(std::uint16_t lb_port, int n) {
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    auto r = http_request(lb_port, "POST", "/generate", small_request().dump());
    if (r.status != 200) {
      if (failed++ < 3) ADD_FAILURE() << "request " << i << ": " << r.status << " " << r.body.substr(0, 300);
    }
  }
  return failed;
}

std::vector<std::string> prefill_args(sim_worker& p) {
  return {"--prefill", p.url(), std::to_string(p.bootstrap_port())};
}

// --- active health checks ------------------------------------------------------------------------

TEST(HealthChecks, AStoppedWorkerIsEjectedByTimedOutChecksAndRestoredByPassingOnes) {
  auto c = cluster::start(1, 2, {"--policy", "round_robin", "--health-check-interval", "0.1",
                                 "--health-check-timeout", "0.3", "--health-check-failures", "2",
                                 "--health-check-passes", "2"});
  auto& d1 = *c->decode[1];
  d1.process().signal(SIGSTOP);  // alive, its socket open, answering nothing: the checks time out
  auto e = await_entry(c->port(), d1.url(), [](const json& e) { return is_state(e, "ejected"); });
  EXPECT_EQ(e["health_check_ejected"], true) << e.dump();
  EXPECT_EQ(e["failures"], 0) << "ejected by the checks before any request failed on it";
  const auto requests = e["requests"].get<int>();
  EXPECT_EQ(failed_of(c->port(), 20), 0);
  EXPECT_EQ(listed(c->port(), d1.url())["requests"], requests) << "an ejected worker got requests";

  d1.process().signal(SIGCONT);
  await_entry(c->port(), d1.url(), [](const json& e) { return is_state(e, "available"); });
  EXPECT_EQ(failed_of(c->port(), 20), 0);
  EXPECT_GT(listed(c->port(), d1.url())["requests"].get<int>(), requests) << "restored but never used";
  EXPECT_THAT(c->lb->process().output(), ::testing::HasSubstr("2 health checks in a row passed"));
}

TEST(HealthChecks, AWorkerFailingGenerateButPassingChecksStaysEjectedForItsFailTimeout) {
  // /health answers 200 while generate requests get 503: the checks pass, the passive detection
  // ejects it, and passing checks do not end that ejection early.
  auto c = cluster::start(1, 2, {"--policy", "round_robin", "--health-check-interval", "0.1",
                                 "--fail-timeout", "30"});
  c->decode[1]->fault({{"fail_status", 503}});
  EXPECT_EQ(failed_of(c->port(), 20), 0);  // retried on decode[0]
  auto e = listed(c->port(), c->decode[1]->url());
  ASSERT_TRUE(is_state(e, "ejected")) << e.dump();
  EXPECT_FALSE(e.contains("health_check_ejected")) << e.dump();
  // A second later (ten check rounds, all passing) it is still out.
  auto later = await_entry(c->port(), c->decode[1]->url(), [&](const json& x) {
    return x.is_object() && x["ejected_for_s"].is_number() && x["ejected_for_s"].get<double>() < 29.0;
  });
  EXPECT_EQ(later["state"], "ejected") << later.dump();
}

TEST(HealthChecks, SigtermEndsPdlbAtOnceWhileChecksAndPollsWaitOnAStoppedWorker) {
  auto p = sim_worker::start("prefill", fast_sim_args());
  auto d = sim_worker::start("decode", fast_sim_args());
  d->process().signal(SIGSTOP);  // connections are accepted by the kernel, nothing answers
  auto lb_args = prefill_args(*p);
  lb_args.insert(lb_args.end(), {"--decode", d->url(), "--health-check-interval", "0.1", "--health-check-timeout",
                                 "30", "--load-source", "worker", "--load-poll-interval", "30"});
  auto lb = pdlb_process::start(lb_args);
  // A health check and a load poll are waiting on it (their connections are its only ones).
  await_entry(lb->port(), d->url(), [](const json& e) { return e.is_object() && e["open_connections"] >= 2; });
  const auto sent = std::chrono::steady_clock::now();
  lb->process().signal(SIGTERM);
  auto code = lb->process().wait_exit(20s);
  ASSERT_TRUE(code.has_value()) << lb->process().output();
  EXPECT_EQ(*code, 0) << lb->process().output();
  EXPECT_LT(std::chrono::steady_clock::now() - sent, 5s) << "shutdown waited for the 30 s check timeout";
  d->process().signal(SIGCONT);
}

// --- load source ---------------------------------------------------------------------------------

// Opens `n` streams straight to a decode worker whose KV never comes (a room no prefill serves):
// the worker counts them in /get_load's num_reqs, as it would another pdlb's requests.
std::vector<std::unique_ptr<http_connection>> hold_requests(sim_worker& decode, sim_worker& prefill, int n) {
  std::vector<std::unique_ptr<http_connection>> held;
  for (int i = 0; i < n; ++i) {
    auto conn = std::make_unique<http_connection>(decode.port(), decode.host());
    conn->send("POST", "/generate",
               json({{"text", "held"}, {"stream", true}, {"bootstrap_host", prefill.host()},
                     {"bootstrap_port", prefill.bootstrap_port()}, {"bootstrap_room", 4242 + i}})
                   .dump());
    held.push_back(std::move(conn));
  }
  decode.wait("waiting_kv=" + std::to_string(n));
  return held;
}

// A decode worker that keeps held requests waiting for their KV for two minutes.
std::unique_ptr<sim_worker> patient_decode() {
  auto args = fast_sim_args();
  args.insert(args.end(), {"--waiting-timeout", "120"});
  return sim_worker::start("decode", args);
}

int requests_from_pdlb(const std::string& load_source) {
  auto p = sim_worker::start("prefill", fast_sim_args());
  auto d0 = sim_worker::start("decode", fast_sim_args());
  auto d1 = patient_decode();
  auto held = hold_requests(*d1, *p, 8);
  auto lb_args = prefill_args(*p);
  lb_args.insert(lb_args.end(), {"--decode", d0->url(), d1->url(), "--policy", "po2", "--load-source", load_source,
                                 "--load-poll-interval", "0.1"});
  auto lb = pdlb_process::start(lb_args);
  if (load_source == "worker")
    await_entry(lb->port(), d1->url(), [](const json& e) { return e.is_object() && e["reported_load"] == 8; });
  EXPECT_EQ(failed_of(lb->port(), 40), 0);
  return listed(lb->port(), d1->url())["requests"].get<int>();
}

TEST(LoadSource, WorkerLoadMakesPo2AvoidAWorkerBusyWithAnotherPdlbsRequests) {
  EXPECT_EQ(requests_from_pdlb("worker"), 0);
}

TEST(LoadSource, LocalLoadCannotSeeAnotherPdlbsRequests) {
  // The control: with only its own in-flight counts, po2 sends about half to the busy worker.
  EXPECT_GT(requests_from_pdlb("local"), 0);
}

TEST(LoadSource, AWorkerThatStopsAnsweringGetLoadKeepsItsLocalCountOnly) {
  auto p = sim_worker::start("prefill", fast_sim_args());
  auto d = patient_decode();
  auto held = hold_requests(*d, *p, 3);
  auto lb_args = prefill_args(*p);
  lb_args.insert(lb_args.end(), {"--decode", d->url(), "--load-source", "worker", "--load-poll-interval", "0.1"});
  auto lb = pdlb_process::start(lb_args);
  await_entry(lb->port(), d->url(), [](const json& e) { return e.is_object() && e["reported_load"] == 3; });
  d->process().signal(SIGSTOP);
  await_entry(lb->port(), d->url(), [](const json& e) { return e.is_object() && e["reported_load"] == 0; });
  d->process().signal(SIGCONT);
}

// --- DNS discovery -------------------------------------------------------------------------------

// Starts a decode worker on `host` (a 127.0.0.x address); port 0 picks one, or the given one.
std::unique_ptr<sim_worker> decode_on(const std::string& host, std::uint16_t port = 0,
                                      std::vector<std::string> extra = fast_sim_args()) {
  extra.insert(extra.end(), {"--host", host, "--port", std::to_string(port)});
  return sim_worker::start("decode", extra);
}

TEST(Discovery, EveryRecordIsAWorkerAndARecordThatDisappearsDrains) {
  auto p = sim_worker::start("prefill", fast_sim_args());
  auto a = decode_on("127.0.0.2");
  const auto port = a->port();  // one port for every record of the name, as in a Service
  auto b = decode_on("127.0.0.3", port);
  auto dns = dns_server::start("pdlb.test", {{"decode.pdlb.test", "127.0.0.2"}, {"decode.pdlb.test", "127.0.0.3"}});
  ASSERT_TRUE(dns);
  auto lb_args = prefill_args(*p);
  lb_args.insert(lb_args.end(), {"--decode-dns", "decode.pdlb.test:" + std::to_string(port), "--dns-server",
                                 dns->address(), "--dns-interval", "0.2", "--policy", "round_robin"});
  auto lb = pdlb_process::start(lb_args);
  await_entry(lb->port(), a->url(), [](const json& e) { return is_state(e, "available"); });
  await_entry(lb->port(), b->url(), [](const json& e) { return is_state(e, "available"); });
  EXPECT_EQ(listed(lb->port(), a->url())["worker_type"], "decode");
  EXPECT_EQ(failed_of(lb->port(), 10), 0);
  EXPECT_GT(a->stats()["finished"].get<int>(), 0);
  EXPECT_GT(b->stats()["finished"].get<int>(), 0);

  // 127.0.0.3 leaves the record set and 127.0.0.4 joins it.
  auto c = decode_on("127.0.0.4", port);
  dns->set({{"decode.pdlb.test", "127.0.0.2"}, {"decode.pdlb.test", "127.0.0.4"}});
  await_entry(lb->port(), b->url(), [](const json& e) { return e.is_null(); });  // drained, idle: gone
  await_entry(lb->port(), c->url(), [](const json& e) { return is_state(e, "available"); });
  const auto b_received = b->stats()["received"].get<int>();
  EXPECT_EQ(failed_of(lb->port(), 10), 0);
  EXPECT_EQ(b->stats()["received"], b_received) << "a worker whose record is gone got a request";
  EXPECT_GT(c->stats()["finished"].get<int>(), 0);
  EXPECT_THAT(lb->process().output(), ::testing::HasSubstr("decode.pdlb.test no longer has it"));
}

TEST(Discovery, AFailingDnsServerKeepsTheWorkersItFound) {
  auto p = sim_worker::start("prefill", fast_sim_args());
  auto a = decode_on("127.0.0.2");
  auto dns = dns_server::start("pdlb.test", {{"decode.pdlb.test", "127.0.0.2"}});
  ASSERT_TRUE(dns);
  auto lb_args = prefill_args(*p);
  lb_args.insert(lb_args.end(), {"--decode-dns", "decode.pdlb.test:" + std::to_string(a->port()), "--dns-server",
                                 dns->address(), "--dns-interval", "0.2"});
  auto lb = pdlb_process::start(lb_args);
  await_entry(lb->port(), a->url(), [](const json& e) { return is_state(e, "available"); });
  const auto from = lb->process().line_count();
  dns.reset();  // the server is gone: resolutions time out or are refused
  ASSERT_TRUE(lb->process().wait_for_line(std::regex("resolving decode.pdlb.test failed"), 15s, from))
      << lb->process().output();
  EXPECT_TRUE(is_state(listed(lb->port(), a->url()), "available"));
  EXPECT_EQ(failed_of(lb->port(), 5), 0);
}

// --- issue 11's "done when": membership changes under load ---------------------------------------

// pdlb-bench's JSON report: the last object it printed.
std::string bench_report(child_process& bench) {
  const auto out = bench.output();
  const auto brace = out.rfind("\n{");
  return out.substr(brace == std::string::npos ? 0 : brace + 1);
}

// A worker that pdlb stopped picking after it had given it `given` requests: it got no other, and
// every one of them finished whole.
void expect_drained_whole(sim_worker& w, int given) {
  auto s = w.wait("active=0", 10s);
  EXPECT_EQ(s["received"], given) << w.url() << " got a request after its removal: " << s.dump();
  EXPECT_EQ(s["finished"], s["received"]) << s.dump();
  EXPECT_EQ(s["aborted"], 0) << s.dump();
  EXPECT_EQ(s["failed"], 0) << s.dump();
}

TEST(UnderLoad, AddingRemovingAndDnsChangesFailNoneOfTwoHundredConcurrentStreams) {
  // Decode steps of 25 ms and 16 tokens: a stream lasts about 0.4 s, so 200 at a time keep every
  // worker busy without the 2 cores spending all their time on events.
  auto sim_args = fast_sim_args();
  sim_args.insert(sim_args.end(), {"--step-base-ms", "25"});
  auto p = sim_worker::start("prefill", sim_args);
  auto keep = sim_worker::start("decode", sim_args);
  auto removed = sim_worker::start("decode", sim_args);
  auto added = sim_worker::start("decode", sim_args);
  auto dns_old = decode_on("127.0.0.2", 0, sim_args);
  auto dns_new = decode_on("127.0.0.3", dns_old->port(), sim_args);
  auto dns = dns_server::start("pdlb.test", {{"decode.pdlb.test", "127.0.0.2"}});
  ASSERT_TRUE(dns);
  auto lb_args = prefill_args(*p);
  lb_args.insert(lb_args.end(), {"--decode", keep->url(), removed->url(), "--decode-dns",
                                 "decode.pdlb.test:" + std::to_string(dns_old->port()), "--dns-server",
                                 dns->address(), "--dns-interval", "0.2", "--policy", "po2"});
  auto lb = pdlb_process::start(lb_args);
  const auto lb_port = lb->port();
  await_entry(lb_port, dns_old->url(), [](const json& e) { return is_state(e, "available"); });

  child_process bench({PDLB_BENCH_BIN, "--url", "http://127.0.0.1:" + std::to_string(lb_port), "--stream",
                       "--concurrency", "200", "--duration", "8", "--output-tokens", "16", "--timeout", "30",
                       "--json"});
  // Under load: every decode worker has streams running.
  for (auto* w : {keep.get(), removed.get(), dns_old.get()}) w->wait("min_running=5", 20s);

  auto add = http_request(lb_port, "POST", "/workers", json({{"url", added->url()}, {"worker_type", "decode"}}).dump());
  ASSERT_EQ(add.status, 200u) << add.body;
  std::string encoded;
  for (char ch : removed->url()) encoded += ch == ':' ? "%3A" : ch == '/' ? "%2F" : std::string(1, ch);
  auto del = http_request(lb_port, "DELETE", "/workers/" + encoded);
  ASSERT_EQ(del.status, 200u) << del.body;
  // Every request pdlb gave the removed worker, as pdlb counts them once it no longer picks it.
  const auto removed_requests = listed(lb_port, removed->url())["requests"].get<int>();

  dns->set({{"decode.pdlb.test", "127.0.0.3"}});
  auto old_entry = await_entry(lb_port, dns_old->url(), [](const json& e) { return e.is_null() || is_state(e, "draining"); });
  // Drained already and gone if its last stream ended: then nothing was in flight on it.
  const auto dns_old_requests =
      old_entry.is_null() ? dns_old->stats()["received"].get<int>() : old_entry["requests"].get<int>();
  await_entry(lb_port, dns_new->url(), [](const json& e) { return is_state(e, "available"); });
  EXPECT_TRUE(bench.running()) << "the load ended before the changes were done: the test proves nothing";

  ASSERT_TRUE(bench.wait_exit(60s).has_value()) << "pdlb-bench did not finish";
  const std::string report = bench_report(bench);
  auto result = parse_json(report);
  std::printf("pdlb-bench under membership changes: %s completed, %s failed, %s s; removed worker: %d requests, "
              "DNS-removed worker: %d\n",
              result["completed"].dump().c_str(), result["failed"].dump().c_str(), result["duration_s"].dump().c_str(),
              removed_requests, dns_old_requests);
  EXPECT_EQ(result["failed"], 0) << report;
  EXPECT_GT(result["completed"].get<int>(), 400) << report;

  // The new workers took streams; the removed ones got nothing after their removal, and every
  // stream they had finished whole (none aborted or failed).
  EXPECT_GT(added->stats()["finished"].get<int>(), 0);
  EXPECT_GT(dns_new->stats()["finished"].get<int>(), 0);
  expect_drained_whole(*removed, removed_requests);
  expect_drained_whole(*dns_old, dns_old_requests);
  EXPECT_TRUE(listed(lb_port, removed->url()).is_null()) << "a drained worker stayed listed";
}

// --- issue 12's "done when": the config file's worker lists changed under load, then a broken file --

TEST(UnderLoad, ASighupWithChangedWorkerListsFailsNoneOfTwoHundredStreamsAndABrokenFileChangesNothing) {
  auto sim_args = fast_sim_args();
  sim_args.insert(sim_args.end(), {"--step-base-ms", "25"});
  auto p = sim_worker::start("prefill", sim_args);
  auto keep = sim_worker::start("decode", sim_args);
  auto removed = sim_worker::start("decode", sim_args);
  auto added = sim_worker::start("decode", sim_args);
  auto toml = [&](const std::vector<sim_worker*>& decode) {
    std::string s = "log-interval = 0\npolicy = \"po2\"\n[[prefill]]\nurl = \"" + p->url() +
                    "\"\nbootstrap_port = " + std::to_string(p->bootstrap_port()) + "\n";
    for (auto* d : decode) s += "[[decode]]\nurl = \"" + d->url() + "\"\n";
    return s;
  };
  temp_dir dir;
  const auto file = dir.write("pdlb.toml", toml({keep.get(), removed.get()}));
  auto lb = pdlb_process::start({"--config", file});
  const auto lb_port = lb->port();

  child_process bench({PDLB_BENCH_BIN, "--url", "http://127.0.0.1:" + std::to_string(lb_port), "--stream",
                       "--concurrency", "200", "--duration", "8", "--output-tokens", "16", "--timeout", "30",
                       "--json"});
  for (auto* w : {keep.get(), removed.get()}) w->wait("min_running=5", 20s);

  dir.write("pdlb.toml", toml({keep.get(), added.get()}));
  auto from = lb->process().line_count();
  lb->process().signal(SIGHUP);
  ASSERT_TRUE(lb->process().wait_for_line(std::regex("reload: applied"), 10s, from)) << lb->process().output();
  auto gone = await_entry(lb_port, removed->url(), [](const json& e) { return e.is_null() || is_state(e, "draining"); });
  const auto removed_requests = gone.is_null() ? removed->stats()["received"].get<int>() : gone["requests"].get<int>();
  await_entry(lb_port, added->url(), [](const json& e) { return is_state(e, "available"); });

  // A broken file while the streams run: refused, and the workers stay as they are.
  dir.write("pdlb.toml", "max-retries = \"two\"\n" + toml({added.get()}));
  from = lb->process().line_count();
  lb->process().signal(SIGHUP);
  ASSERT_TRUE(lb->process().wait_for_line(std::regex("reload refused"), 10s, from)) << lb->process().output();
  EXPECT_TRUE(is_state(listed(lb_port, keep->url()), "available")) << "a refused file removed a worker";
  EXPECT_TRUE(bench.running()) << "the load ended before the changes were done: the test proves nothing";

  ASSERT_TRUE(bench.wait_exit(60s).has_value()) << "pdlb-bench did not finish";
  const std::string report = bench_report(bench);
  auto result = parse_json(report);
  std::printf("pdlb-bench across a SIGHUP that changes the workers: %s completed, %s failed; removed worker: %d "
              "requests\n",
              result["completed"].dump().c_str(), result["failed"].dump().c_str(), removed_requests);
  EXPECT_EQ(result["failed"], 0) << report;
  EXPECT_GT(result["completed"].get<int>(), 400) << report;
  EXPECT_GT(added->stats()["finished"].get<int>(), 0) << "the worker the file added took no stream";
  EXPECT_GT(keep->stats()["finished"].get<int>(), 0);
  expect_drained_whole(*removed, removed_requests);
  EXPECT_TRUE(await_entry(lb_port, removed->url(), [](const json& e) { return e.is_null(); }).is_null())
      << "a drained worker stayed listed";
}

}  // namespace
}  // namespace pdlb::test
