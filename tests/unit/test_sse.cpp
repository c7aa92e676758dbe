#include "pdlb/sse.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace {

std::vector<std::string> split_in_pieces(std::string_view stream, const std::vector<std::size_t>& cuts,
                                         std::string* tail = nullptr) {
  pdlb::sse_splitter s;
  std::vector<std::string> events;
  std::size_t at = 0;
  for (std::size_t cut : cuts) {
    s.feed(stream.substr(at, cut - at));
    at = cut;
    while (auto ev = s.next_event()) events.emplace_back(*ev);
  }
  s.feed(stream.substr(at));
  while (auto ev = s.next_event()) events.emplace_back(*ev);
  if (tail) *tail = std::string(s.pending());
  return events;
}

const std::string sample =
    "data: {\"text\":\"a\",\"meta_info\":{\"id\":1}}\n\n"
    ": keep-alive comment\n\n"
    "event: message\ndata: {\"text\":\"b\"}\n\n"
    "data: line one\ndata: line two\n\n"
    "data: [DONE]\n\n";

TEST(Sse, SplitsEventsAtBlankLines) {
  const auto events = split_in_pieces(sample, {});
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0], "data: {\"text\":\"a\",\"meta_info\":{\"id\":1}}\n\n");
  EXPECT_EQ(events[2], "event: message\ndata: {\"text\":\"b\"}\n\n");
  EXPECT_EQ(events[4], "data: [DONE]\n\n");
}

TEST(Sse, EverySplitPointGivesTheSameEvents) {
  const auto whole = split_in_pieces(sample, {});
  for (std::size_t cut = 0; cut <= sample.size(); ++cut) {
    EXPECT_EQ(split_in_pieces(sample, {cut}), whole) << "cut at " << cut;
  }
  for (std::size_t a = 0; a <= sample.size(); a += 3) {
    for (std::size_t b = a; b <= sample.size(); b += 5) EXPECT_EQ(split_in_pieces(sample, {a, b}), whole);
  }
  std::vector<std::size_t> every_byte;
  for (std::size_t i = 1; i < sample.size(); ++i) every_byte.push_back(i);
  EXPECT_EQ(split_in_pieces(sample, every_byte), whole);
}

TEST(Sse, HandlesCrlfAndCrLineEndings) {
  const std::string crlf = "data: a\r\n\r\ndata: b\r\ndata: c\r\n\r\n";
  const std::string cr = "data: a\r\rdata: b\r\r";
  const std::string mixed = "data: a\n\r\ndata: b\r\n\n";
  for (std::size_t cut = 0; cut <= crlf.size(); ++cut) {
    const auto ev = split_in_pieces(crlf, {cut});
    ASSERT_EQ(ev.size(), 2u) << cut;
    EXPECT_EQ(ev[0], "data: a\r\n\r\n");
    EXPECT_EQ(ev[1], "data: b\r\ndata: c\r\n\r\n");
  }
  EXPECT_EQ(split_in_pieces(cr, {}), (std::vector<std::string>{"data: a\r\r", "data: b\r\r"}));
  EXPECT_EQ(split_in_pieces(mixed, {}), (std::vector<std::string>{"data: a\n\r\n", "data: b\r\n\n"}));
}

TEST(Sse, LfAfterACrTerminatorInTheNextChunkIsNotAnEvent) {
  // "\r\r" ended the event when it arrived; the "\n" that follows completes its CRLF.
  std::string tail;
  const auto ev = split_in_pieces("data: a\r\r\ndata: b\n\n", {9}, &tail);
  EXPECT_EQ(ev, (std::vector<std::string>{"data: a\r\r", "data: b\n\n"}));
  EXPECT_EQ(tail, "");
}

TEST(Sse, CrlfTerminatorSplitBeforeItsLastLfWaitsForIt) {
  pdlb::sse_splitter s;
  s.feed("data: a\r\n\r");
  EXPECT_FALSE(s.next_event());
  EXPECT_EQ(s.pending(), "data: a\r\n\r");
  s.feed("\n");
  auto ev = s.next_event();
  ASSERT_TRUE(ev);
  EXPECT_EQ(*ev, "data: a\r\n\r\n");
}

TEST(Sse, PartialTailStaysPending) {
  std::string tail;
  const auto ev = split_in_pieces("data: 1\n\ndata: 2\n", {3}, &tail);
  EXPECT_EQ(ev, std::vector<std::string>{"data: 1\n\n"});
  EXPECT_EQ(tail, "data: 2\n");
}

TEST(Sse, ClearStartsOver) {
  pdlb::sse_splitter s;
  s.feed("data: x\n");
  s.clear();
  s.feed("data: y\n\n");
  auto ev = s.next_event();
  ASSERT_TRUE(ev);
  EXPECT_EQ(*ev, "data: y\n\n");
  EXPECT_FALSE(s.next_event());
}

TEST(Sse, CompletePrefixEndsAtTheLastTerminator) {
  EXPECT_EQ(pdlb::complete_prefix_length(""), 0u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1"), 0u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\n"), 0u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\n\n"), 9u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\n\ndata: 2\n"), 9u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\n\ndata: 2\n\n"), 18u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\r\n\r\nda"), 11u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\r\n"), 0u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\r\r"), 9u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\n\r\n"), 10u);
  // A CRLF stream's final CR waits for its LF, which is nearly always in the next read.
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\r\n\r"), 0u);
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\r\n\r\n"), 11u);
  // But after a blank CRLF line the CR is a blank line of its own, complete at once.
  EXPECT_EQ(pdlb::complete_prefix_length("data: 1\r\n\r\n\r"), 12u);
}

TEST(Sse, CompletePrefixAgreesWithTheSplitter) {
  const std::string crlf = "data: a\r\n\r\ndata: b\r\ndata: c\r\n\r\n: x\r\r";
  for (const std::string& stream : {sample, crlf}) {
    for (std::size_t n = 0; n <= stream.size(); ++n) {
      const std::string_view prefix = std::string_view(stream).substr(0, n);
      std::string tail;
      std::size_t events_bytes = 0;
      for (const auto& e : split_in_pieces(prefix, {}, &tail)) events_bytes += e.size();
      EXPECT_EQ(pdlb::complete_prefix_length(prefix), events_bytes) << n;
    }
  }
}

TEST(Sse, CompletePrefixCanSkipWhatWasAlreadySearched) {
  const std::string buf = "data: 1\n\ndata: 2";
  EXPECT_EQ(pdlb::complete_prefix_length(buf, 9), 0u);
  EXPECT_EQ(pdlb::complete_prefix_length(buf + "\n\n", buf.size()), buf.size() + 2);
  EXPECT_EQ(pdlb::complete_prefix_length(buf + "\n\n", 8), buf.size() + 2);
}

TEST(Sse, EventDataStripsOneSpaceAndJoinsLines) {
  EXPECT_EQ(pdlb::event_data("data: {\"a\":1}\n\n"), "{\"a\":1}");
  EXPECT_EQ(pdlb::event_data("data:{\"a\":1}\n\n"), "{\"a\":1}");
  EXPECT_EQ(pdlb::event_data("data:  two spaces\n\n"), " two spaces");
  EXPECT_EQ(pdlb::event_data("data: one\r\ndata: two\r\n\r\n"), "one\ntwo");
  EXPECT_EQ(pdlb::event_data("event: x\nid: 3\ndata: y\n\n"), "y");
  EXPECT_EQ(pdlb::event_data("data\n\n"), "");
  EXPECT_EQ(pdlb::event_data(": comment\n\n"), std::nullopt);
  EXPECT_EQ(pdlb::event_data("\n"), std::nullopt);
  EXPECT_EQ(pdlb::event_data("database: x\n\n"), std::nullopt);
}

TEST(Sse, EventDataIntoScratchIsAViewOfTheEventForOneDataLine) {
  const std::string event = "event: x\ndata: {\"a\":1}\n\n";
  std::string scratch = "untouched";
  const auto data = pdlb::event_data(event, scratch);
  ASSERT_TRUE(data);
  EXPECT_EQ(*data, "{\"a\":1}");
  EXPECT_EQ(data->data(), event.data() + 15);  // no copy
  EXPECT_EQ(scratch, "untouched");
}

TEST(Sse, EventDataIntoScratchJoinsSeveralDataLinesThere) {
  std::string scratch = "old";
  const auto data = pdlb::event_data("data: one\r\ndata:two\ndata\n\n", scratch);
  ASSERT_TRUE(data);
  EXPECT_EQ(*data, "one\ntwo\n");
  EXPECT_EQ(data->data(), scratch.data());
}

TEST(Sse, EventDataIntoScratchAgreesWithTheAllocatingOne) {
  for (std::string_view event : {"data: {\"a\":1}\n\n", "data:  two spaces\n\n", "data: one\r\ndata: two\r\n\r\n",
                                 "event: x\nid: 3\ndata: y\n\n", "data\n\n", ": comment\n\n", "\n",
                                 "database: x\n\n", "data: a\rdata: b\r\r", "data: cut", "data: a\n\ndata: b\n\n"}) {
    std::string scratch;
    const auto view = pdlb::event_data(event, scratch);
    const auto copy = pdlb::event_data(event);
    ASSERT_EQ(view.has_value(), copy.has_value()) << event;
    if (view) {
      EXPECT_EQ(*view, *copy) << event;
    }
  }
}

TEST(Sse, RecognisesDone) {
  EXPECT_TRUE(pdlb::is_done_payload("[DONE]"));
  EXPECT_TRUE(pdlb::is_done_payload(" [DONE]\n"));
  EXPECT_FALSE(pdlb::is_done_payload("{\"text\":\"[DONE]\"}"));
  const auto data = pdlb::event_data("data: [DONE]\r\n\r\n");
  ASSERT_TRUE(data);
  EXPECT_TRUE(pdlb::is_done_payload(*data));
}

TEST(Sse, RandomChunkingOfLargeEventsMatchesWholeFeed) {
  std::mt19937 rng(5);
  std::string stream;
  for (int i = 0; i < 50; ++i) {
    stream += "data: " + std::string(rng() % 3000, 'x') + (i % 3 == 0 ? "\r\n\r\n" : "\n\n");
  }
  const auto whole = split_in_pieces(stream, {});
  ASSERT_EQ(whole.size(), 50u);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::size_t> cuts;
    for (std::size_t at = rng() % 700; at < stream.size(); at += 1 + rng() % 700) cuts.push_back(at);
    ASSERT_EQ(split_in_pieces(stream, cuts), whole);
  }
}

}  // namespace
