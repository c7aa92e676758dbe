// pdlb-sim against real processes on loopback: the PD handshake, capacity, /slow_down, log lines,
// faults, abort accounting and the SGLang/OpenAI response shapes. Events are awaited through
// /sim/wait, never by sleeping.
#include "common/http_client.hpp"
#include "common/sim_fixture.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <boost/asio/write.hpp>

#include <poll.h>

#include <csignal>
#include <future>
#include <regex>

namespace pdlb::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// Fast timing for tests: instant prefill, 2 ms decode steps.
const std::vector<std::string> fast_prefill{"--prefill-tokens-per-s", "0"};
const std::vector<std::string> fast_decode{"--step-base-ms", "2", "--step-per-req-ms", "0"};

std::vector<std::string> args(std::vector<std::string> a, const std::vector<std::string>& more) {
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

json gen_body(const std::string& text, int max_new, std::uint64_t room, std::uint16_t bport,
              json extra = json::object()) {
  json b{{"text", text},
         {"sampling_params", {{"max_new_tokens", max_new}, {"temperature", 0}}},
         {"bootstrap_host", "127.0.0.1"},
         {"bootstrap_port", bport},
         {"bootstrap_room", room}};
  for (auto& [k, v] : extra.items()) b[k] = v;
  return b;
}

http_response post(std::uint16_t port, const std::string& path, const json& body,
                   std::chrono::milliseconds timeout = 30s) {
  return http_request(port, "POST", path, body.dump(), {}, timeout);
}

// A port nothing listens on: bound once, then closed.
std::uint16_t unused_port() {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

struct pd_pair {
  std::unique_ptr<sim_worker> prefill;
  std::unique_ptr<sim_worker> decode;

  static pd_pair start(std::vector<std::string> decode_args = {},
                       std::vector<std::string> prefill_args = {}) {
    pd_pair p;
    p.prefill = sim_worker::start("prefill", args(fast_prefill, prefill_args));
    p.decode = sim_worker::start("decode", args(fast_decode, decode_args));
    return p;
  }

  // Runs the prefill leg to completion, as a load balancer's first leg would.
  json prefill_done(json body) {
    body.erase("stream");  // the answer is only read for its JSON
    auto r = post(prefill->port(), "/generate", body);
    EXPECT_EQ(r.status, 200u) << r.body;
    return json::parse(r.body);
  }
};

// ---------------------------------------------------------------------------------------------
// The PD handshake.

TEST(SimHandshake, DecodeCompletesOnlyAfterPrefillFinishedTheRoom) {
  auto pd = pd_pair::start();
  auto body = gen_body("the decode waits for this prompt", 4, 1234, pd.prefill->bootstrap_port());

  http_connection decode_conn(pd.decode->port());
  decode_conn.send("POST", "/generate", body.dump());
  // The decode has asked the prefill for the room and is still waiting for it.
  pd.prefill->wait("min_bootstrap_requests=1");
  auto waiting = pd.decode->wait("waiting_kv=1");
  EXPECT_EQ(waiting["kv_received"], 0);
  EXPECT_EQ(waiting["generated_tokens"], 0);
  EXPECT_EQ(pd.prefill->stats()["rooms_done"], 0);

  auto first = pd.prefill_done(body);
  auto resp = decode_conn.read_response();
  ASSERT_EQ(resp.status, 200u) << resp.body;
  auto out = json::parse(resp.body);
  EXPECT_EQ(out["meta_info"]["completion_tokens"], 4);
  // The decode's first token is the one the prefill produced (it came with the KV cache).
  EXPECT_EQ(out["output_ids"][0], first["output_ids"][0]);
  auto s = pd.decode->stats();
  EXPECT_EQ(s["kv_received"], 1);
  EXPECT_EQ(s["finished"], 1);
  EXPECT_EQ(s["active"], 0);
}

TEST(SimHandshake, DecodeArrivingAfterPrefillFindsTheFinishedRoom) {
  auto pd = pd_pair::start();
  auto body = gen_body("late decode", 3, 77, pd.prefill->bootstrap_port());
  pd.prefill_done(body);
  auto r = post(pd.decode->port(), "/generate", body);
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(json::parse(r.body)["meta_info"]["completion_tokens"], 3);
}

TEST(SimHandshake, WrongBootstrapPortFailsAfterWaitingTimeoutWithSglangErrorShape) {
  auto decode = sim_worker::start("decode", args(fast_decode, {"--waiting-timeout", "1"}));
  auto t0 = std::chrono::steady_clock::now();
  auto r = post(decode->port(), "/generate", gen_body("nobody listens", 4, 5, unused_port()));
  auto elapsed = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(r.status, 500u) << r.body;
  auto e = json::parse(r.body);
  EXPECT_EQ(e["object"], "error");
  EXPECT_EQ(e["code"], 500);
  std::string msg = e["message"];
  EXPECT_NE(msg.find("KVTransferError(bootstrap_room=5)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("in KVPoll.WaitingForInput"), std::string::npos) << msg;
  EXPECT_GE(elapsed, 1s);
  EXPECT_LT(elapsed, 10s);
  auto s = decode->wait("failed=1&active=0");
  EXPECT_EQ(s["waiting_kv"], 0);
}

TEST(SimHandshake, WrongRoomFailsAfterWaitingTimeout) {
  auto pd = pd_pair::start({"--waiting-timeout", "1"});
  pd.prefill_done(gen_body("a room that exists", 2, 1, pd.prefill->bootstrap_port()));
  auto r = post(pd.decode->port(), "/generate",
                gen_body("a room that exists", 2, 2, pd.prefill->bootstrap_port()));
  ASSERT_EQ(r.status, 500u) << r.body;
  EXPECT_NE(json::parse(r.body)["message"].get<std::string>().find("timed out after"),
            std::string::npos);
  EXPECT_GE(pd.prefill->stats()["bootstrap_requests"], 1);
  pd.decode->wait("failed=1&active=0");
}

TEST(SimHandshake, StreamFailureEndsWithAbortFinishReasonAndDone) {
  auto decode = sim_worker::start("decode", args(fast_decode, {"--waiting-timeout", "0.5"}));
  auto r = post(decode->port(), "/generate",
                gen_body("x", 4, 9, unused_port(), {{"stream", true}}));
  ASSERT_EQ(r.status, 200u);
  auto events = sse_data(r.body);
  ASSERT_EQ(events.size(), 2u) << r.body;
  auto ev = json::parse(events[0]);
  EXPECT_EQ(ev["meta_info"]["finish_reason"]["type"], "abort");
  EXPECT_EQ(ev["meta_info"]["finish_reason"]["status_code"], 500);
  EXPECT_EQ(events[1], "[DONE]");
}

TEST(SimHandshake, MissingRoomOrHostIsRejectedAtOnceByBothRoles) {
  auto pd = pd_pair::start();
  for (auto* w : {pd.prefill.get(), pd.decode.get()}) {
    json no_room{{"text", "hi"}, {"bootstrap_host", "127.0.0.1"}, {"bootstrap_port", 1}};
    auto r = post(w->port(), "/generate", no_room, 5s);
    EXPECT_EQ(r.status, 400u) << w->role();
    EXPECT_NE(json::parse(r.body)["error"]["message"].get<std::string>().find("bootstrap_room"),
              std::string::npos);
    json no_host{{"text", "hi"}, {"bootstrap_room", 3}, {"bootstrap_port", 1}};
    r = post(w->port(), "/v1/completions", {{"prompt", "hi"}, {"bootstrap_room", 3}}, 5s);
    EXPECT_EQ(r.status, 400u) << w->role();
    r = post(w->port(), "/generate", no_host, 5s);
    EXPECT_EQ(r.status, 400u);
    EXPECT_NE(r.body.find("bootstrap_host"), std::string::npos);
    auto s = w->stats();
    EXPECT_EQ(s["rejected"], 3);
    EXPECT_EQ(s["received"], 0);
  }
}

TEST(SimHandshake, NullBootstrapPortFailsTheDecodeAtOnce) {
  auto decode = sim_worker::start("decode", fast_decode);
  json body = gen_body("x", 2, 3, 1);
  body["bootstrap_port"] = nullptr;
  auto r = post(decode->port(), "/generate", body, 5s);
  EXPECT_EQ(r.status, 500u);
  EXPECT_NE(r.body.find("bootstrap_port is null"), std::string::npos) << r.body;
}

TEST(SimHandshake, DecodeKeepsItsBootstrapConnectionAndRecoversWhenThePrefillRestarts) {
  auto pd = pd_pair::start();
  const auto bport = pd.prefill->bootstrap_port();
  for (std::uint64_t room : {71, 72}) {  // the second item reuses the first one's connection
    auto body = gen_body("reuse", 2, room, bport);
    pd.prefill_done(body);
    auto r = post(pd.decode->port(), "/generate", body);
    ASSERT_EQ(r.status, 200u) << r.body;
  }
  // A new prefill on the same bootstrap port: the kept connection is dead; the decode notices and
  // connects again instead of failing the item.
  pd.prefill.reset();
  pd.prefill =
      sim_worker::start("prefill", args(fast_prefill, {"--bootstrap-port", std::to_string(bport)}));
  auto body = gen_body("reuse", 2, 73, bport);
  pd.prefill_done(body);
  auto r = post(pd.decode->port(), "/generate", body);
  EXPECT_EQ(r.status, 200u) << r.body;
  auto s = pd.decode->wait("finished=3");
  EXPECT_EQ(s["failed"], 0);
}

TEST(SimHandshake, IpV6LiteralInBracketsIsAccepted) {
  auto pd = pd_pair::start({}, {"--host", "::"});
  auto body = gen_body("v6", 2, 66, pd.prefill->bootstrap_port());
  pd.prefill_done(body);
  body["bootstrap_host"] = "[::1]";
  auto r = post(pd.decode->port(), "/generate", body);
  EXPECT_EQ(r.status, 200u) << r.body;
}

TEST(SimHandshake, BatchItemsEachWaitForTheirOwnRoom) {
  auto pd = pd_pair::start();
  auto bport = pd.prefill->bootstrap_port();
  json body{{"text", {"first prompt", "second prompt", "third prompt"}},
            {"sampling_params", {{"max_new_tokens", 3}}},
            {"bootstrap_host", {"127.0.0.1", "127.0.0.1", "127.0.0.1"}},
            {"bootstrap_port", {bport, bport, bport}},
            {"bootstrap_room", {101, 102, 103}}};
  json stream_body = body;
  stream_body["stream"] = true;

  http_connection conn(pd.decode->port());
  conn.send("POST", "/generate", stream_body.dump());
  pd.decode->wait("waiting_kv=3");
  auto pre = pd.prefill_done(body);
  ASSERT_TRUE(pre.is_array());
  ASSERT_EQ(pre.size(), 3u);
  auto resp = conn.read_response();
  ASSERT_EQ(resp.status, 200u);
  auto events = sse_data(resp.body);
  ASSERT_EQ(events.back(), "[DONE]");
  std::map<int, int> per_index;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    auto ev = json::parse(events[i]);
    ASSERT_TRUE(ev.contains("index")) << events[i];
    per_index[ev["index"].get<int>()] = ev["meta_info"]["completion_tokens"].get<int>();
  }
  EXPECT_EQ(per_index, (std::map<int, int>{{0, 3}, {1, 3}, {2, 3}}));

  // Non-stream batch: a list, in order; rooms are done already.
  auto r = post(pd.decode->port(), "/generate", body);
  ASSERT_EQ(r.status, 200u);
  auto list = json::parse(r.body);
  ASSERT_EQ(list.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i)
    EXPECT_EQ(list[i]["output_ids"][0], pre[i]["output_ids"][0]) << i;
  EXPECT_EQ(pd.decode->stats()["finished"], 6);
}

// ---------------------------------------------------------------------------------------------
// Capacity and queueing.

TEST(SimCapacity, MaxRunningRequestsTwoQueuesTheThirdAndDisconnectsAbortAll) {
  auto pd = pd_pair::start({"--max-running-requests", "2", "--step-base-ms", "20"});
  std::vector<std::unique_ptr<http_connection>> conns;
  for (int i = 0; i < 3; ++i) {
    auto body = gen_body("capacity " + std::to_string(i), 100000, 500 + i,
                         pd.prefill->bootstrap_port(), {{"stream", true}});
    pd.prefill_done(body);
    conns.push_back(std::make_unique<http_connection>(pd.decode->port()));
    conns.back()->send("POST", "/generate", body.dump());
  }
  auto s = pd.decode->wait("running=2&queued=1");
  EXPECT_EQ(s["active"], 3);
  // Client disconnects abort the requests and free their slots and KV.
  for (auto& c : conns) c->close();
  s = pd.decode->wait("aborted=3&active=0&running=0&queued=0");
  EXPECT_EQ(s["kv_used_tokens"], 0);
  EXPECT_EQ(s["kv_reserved_tokens"], 0);
}

TEST(SimCapacity, FullKvCacheMakesNewRequestsWaitUntilTokensAreFreed) {
  // 16 chars = 4 input tokens; 4 + 60 output = 64 tokens reserved each; room for one only.
  auto pd = pd_pair::start({"--max-total-tokens", "100", "--step-base-ms", "1"});
  // Frozen by /slow_down, the first request cannot finish before the second one arrives.
  pd.decode->slow_down(600);
  std::vector<std::future<http_response>> results;
  for (int i = 0; i < 2; ++i) {
    auto body = gen_body("sixteen chars #" + std::to_string(i), 60, 700 + i,
                         pd.prefill->bootstrap_port());
    pd.prefill_done(body);
    results.push_back(std::async(std::launch::async, [port = pd.decode->port(), body] {
      return post(port, "/generate", body);
    }));
  }
  auto s = pd.decode->wait("running=1&queued=1");
  EXPECT_EQ(s["kv_reserved_tokens"], 64);
  pd.decode->slow_down(std::nullopt);
  for (auto& f : results) EXPECT_EQ(f.get().status, 200u);
  pd.decode->wait("finished=2&active=0");
}

TEST(SimCapacity, PrefillFloodQueuesFifoUnderTheBatchTokenBudget) {
  // 1000 tokens/s and a 40-token budget: 10-token prompts go 4 per batch, 40 ms a batch.
  auto prefill = sim_worker::start(
      "prefill", {"--prefill-tokens-per-s", "1000", "--max-prefill-tokens", "40"});
  std::vector<std::future<http_response>> results;
  for (int i = 0; i < 8; ++i) {
    auto body = gen_body(std::string(40, 'a' + i), 1, 900 + i, prefill->bootstrap_port());
    results.push_back(std::async(std::launch::async, [port = prefill->port(), body] {
      return post(port, "/generate", body);
    }));
  }
  prefill->wait("received=8");
  for (auto& f : results) EXPECT_EQ(f.get().status, 200u);
  auto s = prefill->wait("finished=8&active=0");
  EXPECT_GE(s["prefill_batches"], 2);
  EXPECT_EQ(s["prefill_tokens"], 80);
  EXPECT_EQ(s["rooms_done"], 8);
}

// ---------------------------------------------------------------------------------------------
// /slow_down.

TEST(SimSlowDown, DecodeMakesNoProgressWhileSlowedButStillReceivesKv) {
  auto pd = pd_pair::start();
  pd.decode->slow_down(600);
  std::vector<std::future<http_response>> results;
  for (int i = 0; i < 3; ++i) {
    auto body = gen_body("slowed " + std::to_string(i), 5, 300 + i, pd.prefill->bootstrap_port());
    results.push_back(std::async(std::launch::async, [port = pd.decode->port(), body] {
      return post(port, "/generate", body);
    }));
    pd.prefill_done(body);
  }
  auto s = pd.decode->wait("kv_received=3&waiting_kv=0");
  EXPECT_EQ(s["generated_tokens"], 0);
  EXPECT_EQ(s["forward_sleep_time"], 600.0);
  EXPECT_EQ(s["finished"], 0);

  pd.decode->slow_down(std::nullopt);
  for (auto& f : results) EXPECT_EQ(f.get().status, 200u);
  s = pd.decode->wait("finished=3&active=0");
  EXPECT_EQ(s["generated_tokens"], 15);
  EXPECT_EQ(s["forward_sleep_time"], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Log lines.

TEST(SimLogs, DecodeAndPrefillBatchLinesHaveSglangFormatAndTheRightNumbers) {
  auto pd = pd_pair::start({"--decode-log-interval", "2"});
  // "abcdefgh" is 8 bytes: 2 input tokens at 4 chars per token.
  auto body = gen_body("abcdefgh", 6, 42, pd.prefill->bootstrap_port());
  pd.prefill_done(body);
  auto r = post(pd.decode->port(), "/generate", body);
  ASSERT_EQ(r.status, 200u);

  static const std::regex prefill_re(
      R"(Prefill batch\. #new-seq: (\d+), #new-token: (\d+), #cached-token: (\d+), token usage: (\d+\.\d\d), #running-req: (\d+), #queue-req: (\d+), .*input throughput \(token/s\): (\d+\.\d\d), )");
  auto pm = pd.prefill->process().wait_for_line(prefill_re, 5s);
  ASSERT_TRUE(pm) << pd.prefill->process().output();
  EXPECT_EQ((*pm)[1], "1");
  EXPECT_EQ((*pm)[2], "2");
  EXPECT_EQ((*pm)[3], "0");

  static const std::regex decode_re(
      R"(Decode batch\. #running-req: (\d+), #token: (\d+), token usage: (\d+\.\d\d), pre-allocated usage: 0\.00, #retracted-req: 0, cuda graph: True, gen throughput \(token/s\): (\d+\.\d\d), #queue-req: (\d+), )");
  auto dm = pd.decode->process().wait_for_line(decode_re, 5s);
  ASSERT_TRUE(dm) << pd.decode->process().output();
  // Logged before the 2nd step: 1 request holding 2 input + 1 generated tokens.
  EXPECT_EQ((*dm)[1], "1");
  EXPECT_EQ((*dm)[2], "3");
  EXPECT_EQ((*dm)[3], "0.00");
  EXPECT_EQ((*dm)[5], "0");
  EXPECT_GT(std::stod((*dm)[4]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Faults.

TEST(SimFaults, FailStatusFromFlagAnswersGenerateRoutesOnly) {
  auto decode = sim_worker::start("decode", args(fast_decode, {"--fail-status", "503"}));
  auto r = post(decode->port(), "/generate", gen_body("x", 1, 1, 1), 5s);
  EXPECT_EQ(r.status, 503u);
  EXPECT_EQ(json::parse(r.body)["code"], 503);
  r = post(decode->port(), "/v1/chat/completions",
           {{"messages", {{{"role", "user"}, {"content", "x"}}}}}, 5s);
  EXPECT_EQ(r.status, 503u);
  EXPECT_EQ(http_request(decode->port(), "GET", "/health").status, 200u);
  EXPECT_EQ(decode->stats()["faults_injected"], 2);
}

TEST(SimFaults, FaultWithCountAffectsOnlyTheNextRequestsAndEmptyObjectClears) {
  auto pd = pd_pair::start();
  pd.prefill->fault({{"fail_status", 500}, {"count", 1}});
  auto body = gen_body("counted", 1, 11, pd.prefill->bootstrap_port());
  EXPECT_EQ(post(pd.prefill->port(), "/generate", body, 5s).status, 500u);
  EXPECT_EQ(post(pd.prefill->port(), "/generate", body, 5s).status, 200u);
  pd.prefill->fault({{"fail_status", 429}});
  EXPECT_EQ(post(pd.prefill->port(), "/generate", body, 5s).status, 429u);
  EXPECT_EQ(post(pd.prefill->port(), "/generate", body, 5s).status, 429u);
  pd.prefill->fault(json::object());
  EXPECT_EQ(post(pd.prefill->port(), "/generate", body, 5s).status, 200u);
}

TEST(SimFaults, DropConnectionClosesWithoutAnswer) {
  auto decode = sim_worker::start("decode", fast_decode);
  decode->fault({{"drop_connection", true}});
  http_connection conn(decode->port());
  conn.send("POST", "/generate", gen_body("x", 1, 1, 1).dump());
  EXPECT_EQ(conn.read_until_close(), "");
  decode->fault(json::object());
  EXPECT_EQ(decode->stats()["faults_injected"], 1);
}

TEST(SimFaults, StallNeverAnswersUntilTheClientLeaves) {
  auto decode = sim_worker::start("decode", args(fast_decode, {"--stall"}));
  {
    // A plain socket: asio's blocking reads ignore SO_RCVTIMEO, and here silence is the point.
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::socket sock(ioc);
    sock.connect({boost::asio::ip::make_address("127.0.0.1"), decode->port()});
    std::string body = gen_body("x", 1, 1, 1).dump();
    std::string req = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    boost::asio::write(sock, boost::asio::buffer(req));
    decode->wait("faults_injected=1");
    pollfd pfd{sock.native_handle(), POLLIN, 0};
    EXPECT_EQ(::poll(&pfd, 1, 300), 0) << "the stalled request was answered";
  }
  // The stalled handler ended with its client; the worker still serves other routes.
  EXPECT_EQ(http_request(decode->port(), "GET", "/health").status, 200u);
}

TEST(SimFaults, LatencyDelaysTheAnswer) {
  auto pd = pd_pair::start({}, {"--latency-ms", "300"});
  auto t0 = std::chrono::steady_clock::now();
  pd.prefill_done(gen_body("slow", 1, 8, pd.prefill->bootstrap_port()));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 300ms);
}

TEST(SimFaults, DieAfterTokensCutsTheStreamWithoutFinalChunk) {
  auto pd = pd_pair::start({"--die-after-tokens", "3"});
  auto body = gen_body("dies", 10, 12, pd.prefill->bootstrap_port(), {{"stream", true}});
  pd.prefill_done(body);
  http_connection conn(pd.decode->port());
  conn.send("POST", "/generate", body.dump());
  auto resp = conn.read_response();
  EXPECT_EQ(resp.status, 200u);
  EXPECT_FALSE(resp.complete);
  auto events = sse_data(resp.body);
  EXPECT_EQ(events.size(), 3u) << resp.body;
  for (auto& e : events) EXPECT_NE(e, "[DONE]");
  pd.decode->wait("aborted=1&active=0");
}

TEST(SimFaults, RefuseConnectionsClosesTheListenerAndEmptyFaultReopensSamePort) {
  auto decode = sim_worker::start("decode", fast_decode);
  auto port = decode->port();
  {
    // A connection accepted before the fault keeps working.
    http_connection keep(port);
    keep.send("POST", "/sim/fault", json{{"refuse_connections", true}}.dump());
    EXPECT_EQ(keep.read_response().status, 200u);
    EXPECT_THROW(http_connection refused(port), std::exception);
    keep.send("POST", "/sim/fault", "{}");
    EXPECT_EQ(keep.read_response().status, 200u);
  }
  EXPECT_EQ(http_request(port, "GET", "/health").status, 200u);
}

// ---------------------------------------------------------------------------------------------
// Abort accounting.

TEST(SimAbort, ClientDisconnectWhileWaitingForKvAbortsAndFreesTheFetch) {
  auto decode = sim_worker::start("decode", fast_decode);
  {
    http_connection conn(decode->port());
    conn.send("POST", "/generate", gen_body("x", 4, 1, unused_port()).dump());
    decode->wait("waiting_kv=1");
  }
  auto s = decode->wait("aborted=1&active=0&waiting_kv=0");
  EXPECT_EQ(s["failed"], 0);
}

TEST(SimAbort, ClientDisconnectMidStreamAbortsAndFreesTheSlot) {
  auto pd = pd_pair::start({"--step-base-ms", "5"});
  auto body = gen_body("long stream", 100000, 21, pd.prefill->bootstrap_port(), {{"stream", true}});
  pd.prefill_done(body);
  {
    http_connection conn(pd.decode->port());
    conn.send("POST", "/generate", body.dump());
    EXPECT_EQ(conn.read_header().status, 200u);
    EXPECT_TRUE(conn.read_body_some().has_value());
    pd.decode->wait("running=1&min_generated_tokens=2");
    conn.reset();
  }
  auto s = pd.decode->wait("aborted=1&active=0&running=0");
  EXPECT_EQ(s["kv_used_tokens"], 0);
}

TEST(SimAbort, AbortRequestRouteEndsTheRequestWithAbortFinishReason) {
  auto pd = pd_pair::start();
  auto body = gen_body("to abort", 100000, 31, pd.prefill->bootstrap_port(),
                       {{"rid", "abort-me"}});
  pd.prefill_done(body);
  auto fut = std::async(std::launch::async,
                        [port = pd.decode->port(), body] { return post(port, "/generate", body); });
  pd.decode->wait("running=1");
  EXPECT_EQ(post(pd.decode->port(), "/abort_request", {{"rid", "abort-me"}}).status, 200u);
  auto r = fut.get();
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(json::parse(r.body)["meta_info"]["finish_reason"]["type"], "abort");
  pd.decode->wait("aborted=1&active=0");
}

// ---------------------------------------------------------------------------------------------
// Output: determinism and shapes.

TEST(SimOutput, SamePromptGivesSameTextIdsAndLogprobs) {
  auto pd = pd_pair::start();
  auto run = [&](const std::string& text, std::uint64_t room) {
    auto body = gen_body(text, 8, room, pd.prefill->bootstrap_port(), {{"return_logprob", true}});
    pd.prefill_done(body);
    auto r = post(pd.decode->port(), "/generate", body);
    EXPECT_EQ(r.status, 200u);
    return json::parse(r.body);
  };
  auto a = run("determinism", 1);
  auto b = run("determinism", 2);
  auto c = run("something else", 3);
  EXPECT_EQ(a["text"], b["text"]);
  EXPECT_EQ(a["output_ids"], b["output_ids"]);
  EXPECT_EQ(a["meta_info"]["output_token_logprobs"], b["meta_info"]["output_token_logprobs"]);
  EXPECT_NE(a["meta_info"]["id"], b["meta_info"]["id"]);
  EXPECT_NE(a["text"], c["text"]);
}

TEST(SimOutput, GenerateLogprobShapesOnPrefillAndDecode) {
  auto pd = pd_pair::start();
  auto body = gen_body("twelve chars", 3, 5, pd.prefill->bootstrap_port(),
                       {{"return_logprob", true}});
  auto pre = pd.prefill_done(body);
  auto& pm = pre["meta_info"];
  EXPECT_EQ(pm["prompt_tokens"], 3);
  EXPECT_EQ(pm["completion_tokens"], 1);
  EXPECT_EQ(pm["finish_reason"], json({{"type", "length"}, {"length", 1}}));
  ASSERT_EQ(pm["input_token_logprobs"].size(), 3u);
  EXPECT_TRUE(pm["input_token_logprobs"][0][0].is_null());
  for (auto& e : pm["input_token_logprobs"]) {
    ASSERT_EQ(e.size(), 3u);
    EXPECT_TRUE(e[1].is_number_integer());
    EXPECT_TRUE(e[2].is_null());
  }
  EXPECT_TRUE(pm["input_token_logprobs"][1][0].is_number_float());
  ASSERT_EQ(pm["output_token_logprobs"].size(), 1u);

  auto r = post(pd.decode->port(), "/generate", body);
  auto dec = json::parse(r.body);
  auto& dm = dec["meta_info"];
  EXPECT_EQ(dm["input_token_logprobs"], json::array());
  ASSERT_EQ(dm["output_token_logprobs"].size(), 3u);
  EXPECT_EQ(dm["output_token_logprobs"][0], pm["output_token_logprobs"][0]);
  EXPECT_EQ(dm["finish_reason"], json({{"type", "length"}, {"length", 3}}));
  EXPECT_TRUE(dm["e2e_latency"].is_number());
}

TEST(SimOutput, StreamTextIsCumulativeAndStopStringEndsWithStopReason) {
  auto pd = pd_pair::start();
  auto body = gen_body("stop test", 50, 6, pd.prefill->bootstrap_port(), {{"stream", true}});
  pd.prefill_done(body);
  auto events = sse_data(post(pd.decode->port(), "/generate", body).body);
  ASSERT_EQ(events.back(), "[DONE]");
  std::string prev;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    std::string text = json::parse(events[i])["text"];
    EXPECT_EQ(text.rfind(prev, 0), 0u) << "event " << i << " is not cumulative";
    prev = text;
  }
  // Stop at the third word of the output.
  std::string third = json::parse(events[2])["text"];
  std::string word = third.substr(third.rfind(' ') + 1);
  json stop_body = gen_body("stop test", 50, 6, pd.prefill->bootstrap_port());
  stop_body["sampling_params"]["stop"] = word;
  auto out = json::parse(post(pd.decode->port(), "/generate", stop_body).body);
  EXPECT_EQ(out["meta_info"]["finish_reason"]["type"], "stop");
  EXPECT_EQ(out["meta_info"]["finish_reason"]["matched"], word);
  EXPECT_LE(out["meta_info"]["completion_tokens"].get<int>(), 3);
  EXPECT_EQ(out["text"].get<std::string>().find(" " + word), std::string::npos);
}

TEST(SimOutput, StampEventsPutsTheWriteTimeIntoStreamedEventsOnlyWhenAsked) {
  auto pd = pd_pair::start();
  auto stamping = sim_worker::start("decode", args(fast_decode, {"--stamp-events"}));
  auto body = gen_body("stamp test", 4, 81, pd.prefill->bootstrap_port(), {{"stream", true}});
  pd.prefill_done(body);
  auto steady_ns = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  // CLOCK_MONOTONIC is one clock for every process on the host: the stamps fall within the request.
  const std::int64_t before = steady_ns();
  auto events = sse_data(post(stamping->port(), "/generate", body).body);
  const std::int64_t after = steady_ns();
  ASSERT_EQ(events.size(), 5u);  // 4 tokens, [DONE]
  std::int64_t prev = 0;
  const std::regex placed(R"re("e2e_latency":\d+\.\d{6},"sim_write_ns":\d+\})re");
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(std::regex_search(events[i], placed)) << events[i];
    auto m = json::parse(events[i])["meta_info"];
    ASSERT_TRUE(m["sim_write_ns"].is_number_integer()) << events[i];
    auto t = m["sim_write_ns"].get<std::int64_t>();
    EXPECT_GE(t, before);
    EXPECT_LE(t, after);
    EXPECT_GE(t, prev);
    prev = t;
  }
  // Without the flag, and in a non-stream answer: SGLang's format, no stamp.
  EXPECT_EQ(post(pd.decode->port(), "/generate", body).body.find("sim_write_ns"),
            std::string::npos);
  body.erase("stream");
  EXPECT_EQ(post(stamping->port(), "/generate", body).body.find("sim_write_ns"), std::string::npos);
  // OpenAI chunks carry it at the top level.
  json chat{{"model", "m"},
            {"messages", {{{"role", "user"}, {"content", "stamp chat"}}}},
            {"max_tokens", 2},
            {"bootstrap_host", "127.0.0.1"},
            {"bootstrap_port", pd.prefill->bootstrap_port()},
            {"bootstrap_room", 82}};
  ASSERT_EQ(post(pd.prefill->port(), "/v1/chat/completions", chat).status, 200u);
  chat["stream"] = true;
  auto chunks = sse_data(post(stamping->port(), "/v1/chat/completions", chat).body);
  ASSERT_EQ(chunks.size(), 5u);  // role, 2 tokens, finish, [DONE]
  for (int i = 0; i < 4; ++i)
    EXPECT_TRUE(json::parse(chunks[i])["sim_write_ns"].is_number_integer()) << chunks[i];
}

TEST(SimOutput, OpenAiCompletionShapesStreamAndNot) {
  auto pd = pd_pair::start();
  json body{{"model", "m"},
            {"prompt", "openai prompt"},
            {"max_tokens", 4},
            {"bootstrap_host", "127.0.0.1"},
            {"bootstrap_port", pd.prefill->bootstrap_port()},
            {"bootstrap_room", 51}};
  ASSERT_EQ(post(pd.prefill->port(), "/v1/completions", body).status, 200u);
  auto r = post(pd.decode->port(), "/v1/completions", body);
  ASSERT_EQ(r.status, 200u);
  auto j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "m");
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);
  EXPECT_EQ(j["usage"]["total_tokens"],
            j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());

  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  r = post(pd.decode->port(), "/v1/completions", body);
  EXPECT_EQ(r.header("content-type"), "text/event-stream");
  auto events = sse_data(r.body);
  ASSERT_EQ(events.size(), 6u) << r.body;  // 4 tokens, usage, [DONE]
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (int i = 0; i < 4; ++i) {
    auto c = json::parse(events[i]);
    EXPECT_EQ(c["object"], "text_completion");
    text += c["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(c["choices"][0]["finish_reason"], i == 3 ? json("length") : json(nullptr));
  }
  EXPECT_EQ(text, j["choices"][0]["text"]);
  auto usage = json::parse(events[4]);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);
}

TEST(SimOutput, OpenAiChatShapesStreamAndNot) {
  auto pd = pd_pair::start();
  json body{{"model", "m"},
            {"messages", {{{"role", "user"}, {"content", "hello chat"}}}},
            {"max_tokens", 3},
            {"logprobs", true},
            {"bootstrap_host", "127.0.0.1"},
            {"bootstrap_port", pd.prefill->bootstrap_port()},
            {"bootstrap_room", 61}};
  ASSERT_EQ(post(pd.prefill->port(), "/v1/chat/completions", body).status, 200u);
  auto j = json::parse(post(pd.decode->port(), "/v1/chat/completions", body).body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"].size(), 3u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);

  body["stream"] = true;
  auto events = sse_data(post(pd.decode->port(), "/v1/chat/completions", body).body);
  ASSERT_EQ(events.size(), 6u);  // role, 3 tokens, finish, [DONE]
  auto first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  for (int i = 1; i <= 3; ++i)
    content += json::parse(events[i])["choices"][0]["delta"]["content"].get<std::string>();
  EXPECT_EQ(content, j["choices"][0]["message"]["content"]);
  auto last = json::parse(events[4]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(events[5], "[DONE]");
}

// ---------------------------------------------------------------------------------------------
// Info routes and control.

TEST(SimInfo, ServerInfoLoadModelsAndWaitTimeout) {
  auto decode = sim_worker::start("decode", fast_decode);
  auto info = json::parse(http_request(decode->port(), "GET", "/get_server_info").body);
  EXPECT_TRUE(info["internal_states"][0]["last_gen_throughput"].is_number());
  EXPECT_EQ(info["disaggregation_mode"], "decode");
  EXPECT_EQ(info["sim_stats"]["active"], 0);
  auto load = json::parse(http_request(decode->port(), "GET", "/get_load").body);
  EXPECT_EQ(load[0]["num_reqs"], 0);
  auto models = json::parse(http_request(decode->port(), "GET", "/v1/models").body);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(json::parse(http_request(decode->port(), "GET", "/get_model_info").body)["is_generation"],
            true);
  for (auto* path : {"/health", "/health_generate", "/flush_cache", "/start_profile", "/stop_profile"})
    EXPECT_EQ(http_request(decode->port(), "GET", path).status, 200u) << path;
  EXPECT_FALSE(decode->try_wait("min_finished=1", 50ms).has_value());
  EXPECT_EQ(http_request(decode->port(), "GET", "/sim/wait?bogus=1").status, 400u);
  EXPECT_EQ(http_request(decode->port(), "GET", "/nope").status, 404u);
}

TEST(SimProcess, SigtermExitsZeroPromptly) {
  auto decode = sim_worker::start("decode", fast_decode);
  decode->process().signal(SIGTERM);
  // Normally tens of milliseconds; the bound is generous for sanitizer builds on a busy machine.
  EXPECT_EQ(decode->process().wait_exit(20s), 0);
}

}  // namespace
}  // namespace pdlb::test
