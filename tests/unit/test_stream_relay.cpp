// The stream relay without sockets: what reaches the client for each piece of a decode stream.
#include "pdlb/pd_request.hpp"
#include "pdlb/stream_relay.hpp"

#include <gtest/gtest.h>

#include <string>

using pdlb::stream_relay;

namespace {

// Feeds `pieces` in order (the last with end = true) and returns everything written.
std::string relay_all(stream_relay& r, const std::vector<std::string>& pieces) {
  std::string out;
  for (std::size_t i = 0; i < pieces.size(); ++i) out += r.feed(pieces[i], i + 1 == pieces.size()).str();
  return out;
}

}  // namespace

TEST(StreamRelay, WholeEventsGoOutStraightFromTheInput) {
  stream_relay r;
  const std::string piece = "data: {\"text\":\"a\"}\n\ndata: {\"text\":\"b\"}\n\n";
  auto out = r.feed(piece, false);
  EXPECT_EQ(out.str(), piece);
  EXPECT_TRUE(out.head.empty());
  EXPECT_EQ(out.tail.data(), piece.data()) << "whole events are forwarded without a copy";
  EXPECT_EQ(r.held(), 0u);
}

TEST(StreamRelay, AfterAHeldPartialEventALargeReadIsForwardedWithoutACopy) {
  stream_relay r;
  EXPECT_EQ(r.feed("data: {\"text\":\"a\"}\n\ndata: {\"te", false).str(), "data: {\"text\":\"a\"}\n\n");
  std::string big = "xt\":\"b\"}\n\n";
  for (int i = 0; i < 100; ++i) big += "data: {\"text\":\"c\"}\n\n";
  big += "data: {\"par";
  auto out = r.feed(big, false);
  EXPECT_EQ(out.head, "data: {\"te") << "only the held bytes are copied";
  EXPECT_EQ(out.tail.data(), big.data());
  EXPECT_EQ(out.tail.size(), big.size() - 11);
  EXPECT_EQ(r.held(), 11u);
}

TEST(StreamRelay, AnEventEndingInTheFirstBytesOfAReadIsFoundWithTheHeldOnes) {
  stream_relay r;
  EXPECT_TRUE(r.feed("data: x\n", false).empty());  // held: the blank line may come next
  EXPECT_EQ(r.feed("\nda", false).str(), "data: x\n\n");
  EXPECT_EQ(r.held(), 2u);
  EXPECT_TRUE(r.feed("ta: y\r\n\r", false).empty());  // a CR may start a CRLF
  EXPECT_EQ(r.feed("\n", false).str(), "data: y\r\n\r\n");
  EXPECT_EQ(r.held(), 0u);
}

TEST(StreamRelay, APartialEventIsHeldUntilItIsComplete) {
  stream_relay r;
  EXPECT_EQ(r.feed("data: {\"text\":\"a\"}\n\ndata: {\"te", false).str(), "data: {\"text\":\"a\"}\n\n");
  EXPECT_EQ(r.held(), 10u);
  EXPECT_EQ(r.feed("xt\":\"b\"}", false).str(), "");
  EXPECT_EQ(r.feed("\n\ndata: [DO", false).str(), "data: {\"text\":\"b\"}\n\n");
  EXPECT_EQ(r.feed("NE]\n\n", false).str(), "data: [DONE]\n\n");
  EXPECT_EQ(r.held(), 0u);
}

TEST(StreamRelay, TheEndFlushesAnUnterminatedTail) {
  stream_relay r;
  EXPECT_EQ(r.feed("data: x\n\ndata: y", false).str(), "data: x\n\n");
  EXPECT_EQ(r.feed("", true).str(), "data: y");
}

TEST(StreamRelay, FailDropsTheHeldPartialEventAndGivesAnErrorEvent) {
  stream_relay r;
  r.feed("data: {\"text\":\"a\"}\n\ndata: {\"tex", false);
  auto ev = r.fail("decode worker http://w failed while reading the response: timed out");
  EXPECT_EQ(ev,
            "data: {\"error\":{\"message\":\"decode worker http://w failed while reading the response: "
            "timed out\"}}\n\n");
  EXPECT_EQ(r.held(), 0u);
}

TEST(StreamRelay, ByteByByteFeedingGivesTheSameStream) {
  const std::string stream = "data: a\r\n\r\ndata: b\n\n: comment\n\ndata: [DONE]\n\n";
  stream_relay whole;
  const std::string expected = whole.feed(stream, true).str();
  stream_relay bytes;
  std::string out;
  for (std::size_t i = 0; i < stream.size(); ++i) out += bytes.feed(stream.substr(i, 1), i + 1 == stream.size()).str();
  EXPECT_EQ(out, expected);
  EXPECT_EQ(out, stream);
}

TEST(StreamRelay, MergesThePrefillLogprobsIntoEachEvent) {
  pdlb::prefill_logprobs lp;
  lp.items.emplace_back("[-0.5, 1, null]");
  stream_relay r(&lp);
  const std::string out = relay_all(
      r, {"data: {\"text\":\"a\",\"meta_info\":{\"input_token_logprobs\":[]}}\n\ndata: {\"te",
          "xt\":\"b\",\"meta_info\":{\"input_token_logprobs\":[[-0.1, 7, null]]}}\n\n", "data: [DONE]\n\n"});
  EXPECT_NE(out.find("\"input_token_logprobs\":[[-0.5, 1, null]]"), std::string::npos) << out;
  EXPECT_NE(out.find("\"input_token_logprobs\":[[-0.5, 1, null],[-0.1, 7, null]]"), std::string::npos)
      << out;
  EXPECT_NE(out.find("data: [DONE]\n\n"), std::string::npos) << out;
}

TEST(PrefillStreamReader, KeepsTheFirstLogprobsOfEachIndex) {
  pdlb::prefill_stream_reader reader;
  reader.feed("data: {\"index\":1,\"meta_info\":{\"input_token_logprobs\":[[-1, 2, null]]}}\n\nda");
  reader.feed("ta: {\"meta_info\":{\"input_token_logprobs\":[[-3, 4, null]]}}\n\ndata: [DONE]\n\n");
  const auto& items = reader.logprobs().items;
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0], std::optional<std::string>("[-3, 4, null]"));
  EXPECT_EQ(items[1], std::optional<std::string>("[-1, 2, null]"));
}

namespace {

pdlb::prefill_result prefill(pdlb::leg_end end, unsigned status = 200) {
  pdlb::prefill_result r;
  r.end = end;
  r.status = status;
  return r;
}
pdlb::decode_result decode(pdlb::leg_end end, unsigned status = 200) {
  pdlb::decode_result r;
  r.end = end;
  r.status = status;
  return r;
}

}  // namespace

TEST(JudgeAttempt, BothAnsweredWellGivesTheDecodesAnswer) {
  using pdlb::leg_end;
  EXPECT_EQ(pdlb::judge_attempt(prefill(leg_end::answered), decode(leg_end::answered)),
            pdlb::attempt_verdict::decode_answer);
}

TEST(JudgeAttempt, APrefillFailureComesBeforeTheDecodes) {
  using pdlb::leg_end;
  EXPECT_EQ(pdlb::judge_attempt(prefill(leg_end::failed), decode(leg_end::failed)),
            pdlb::attempt_verdict::prefill_failed);
  EXPECT_EQ(pdlb::judge_attempt(prefill(leg_end::answered, 503), decode(leg_end::cancelled)),
            pdlb::attempt_verdict::prefill_failed);
}

TEST(JudgeAttempt, ADecodeErrorAnswerIsRelayedThoughThePrefillWasCancelled) {
  using pdlb::leg_end;
  EXPECT_EQ(pdlb::judge_attempt(prefill(leg_end::cancelled), decode(leg_end::answered, 429)),
            pdlb::attempt_verdict::decode_answer);
}

TEST(JudgeAttempt, ADecodeFailureWithTheCancelledPrefillIsTheDecodes) {
  using pdlb::leg_end;
  EXPECT_EQ(pdlb::judge_attempt(prefill(leg_end::cancelled), decode(leg_end::failed)),
            pdlb::attempt_verdict::decode_failed);
}

TEST(JudgeAttempt, CancelledWithoutAFailureMeansTheClientLeft) {
  using pdlb::leg_end;
  EXPECT_EQ(pdlb::judge_attempt(prefill(leg_end::cancelled), decode(leg_end::cancelled)),
            pdlb::attempt_verdict::client_gone);
  EXPECT_EQ(pdlb::judge_attempt(prefill(leg_end::answered), decode(leg_end::cancelled)),
            pdlb::attempt_verdict::client_gone);
}
