// GCC 12 reports false -Wrestrict overlaps for `"literal" + std::string` (GCC bug 105329).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include "pdlb/logprob_merge.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace {

using pdlb::prefill_logprobs;

prefill_logprobs extract(std::string_view prefill) {
  prefill_logprobs p;
  EXPECT_TRUE(pdlb::extract_input_logprobs(prefill, p)) << prefill;
  return p;
}

std::string merge(std::string_view decode, const prefill_logprobs& p) {
  auto out = pdlb::merge_input_logprobs(decode, p);
  EXPECT_TRUE(out.has_value()) << decode;
  if (out) {
    EXPECT_TRUE(nlohmann::json::accept(*out)) << *out;
  }
  return out.value_or("");
}

TEST(LogprobMerge, ExtractsTheElementsOfASingleResponse) {
  const auto p = extract(R"({"text":"","meta_info":{"id":"x","input_token_logprobs":[ [null,1,null], [-0.5,2,null] ]}})");
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0], "[null,1,null], [-0.5,2,null]");
}

TEST(LogprobMerge, ExtractsPerItemOfABatch) {
  const auto p = extract(
      R"([{"meta_info":{"input_token_logprobs":[[-1,1,null]]}},{"meta_info":{}},7,{"meta_info":{"input_token_logprobs":[]}}])");
  ASSERT_EQ(p.items.size(), 4u);
  EXPECT_EQ(p.items[0], "[-1,1,null]");
  EXPECT_EQ(p.items[1], std::nullopt);
  EXPECT_EQ(p.items[2], std::nullopt);
  EXPECT_EQ(p.items[3], "");
}

TEST(LogprobMerge, ExtractRejectsInvalidOrScalarResponses) {
  prefill_logprobs p;
  EXPECT_FALSE(pdlb::extract_input_logprobs("{", p));
  EXPECT_FALSE(pdlb::extract_input_logprobs("42", p));
  EXPECT_TRUE(p.items.empty());
}

TEST(LogprobMerge, ListsAreFoundOnlyWhereMinilbLooks) {
  // meta_info must be a top-level member of the item, the list a direct member of meta_info.
  const auto p = extract(R"({"x":{"meta_info":{"input_token_logprobs":[1]}},"meta_info":{"y":{"input_token_logprobs":[2]}}})");
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0], std::nullopt);
}

TEST(LogprobMerge, SingleResponsePutsPrefillFirst) {
  const auto p = extract(R"({"meta_info":{"input_token_logprobs":[[-1.5,10,null],[-2.5,11,null]]}})");
  EXPECT_EQ(merge(R"({"text":"ok","meta_info":{"input_token_logprobs":[[-3.5,12,null]],"e2e_latency":0.1}})", p),
            R"({"text":"ok","meta_info":{"input_token_logprobs":[[-1.5,10,null],[-2.5,11,null],[-3.5,12,null)"
            R"(]],"e2e_latency":0.1}})");
}

TEST(LogprobMerge, MatchesMinilbsListConcatenation) {
  const std::string prefill = R"({"meta_info":{"input_token_logprobs":[[null,1,null],[-0.25,2,"a"]]}})";
  const std::string decode = R"({"text":"t","meta_info":{"input_token_logprobs":[[-0.125,3,"b"]],"k":1}})";
  auto expected = nlohmann::json::parse(decode);
  auto pj = nlohmann::json::parse(prefill);
  nlohmann::json joined = pj["meta_info"]["input_token_logprobs"];
  for (const auto& e : expected["meta_info"]["input_token_logprobs"]) joined.push_back(e);
  expected["meta_info"]["input_token_logprobs"] = joined;
  EXPECT_EQ(nlohmann::json::parse(merge(decode, extract(prefill))), expected);
}

TEST(LogprobMerge, EmptyListsOnEitherSideGiveValidJson) {
  const auto empty = extract(R"({"meta_info":{"input_token_logprobs":[ ]}})");
  const auto one = extract(R"({"meta_info":{"input_token_logprobs":[1]}})");
  EXPECT_EQ(merge(R"({"meta_info":{"input_token_logprobs":[2]}})", empty), R"({"meta_info":{"input_token_logprobs":[2]}})");
  EXPECT_EQ(merge(R"({"meta_info":{"input_token_logprobs":[ ]}})", one), R"({"meta_info":{"input_token_logprobs":[1]}})");
  EXPECT_EQ(merge(R"({"meta_info":{"input_token_logprobs":[]}})", empty), R"({"meta_info":{"input_token_logprobs":[]}})");
}

TEST(LogprobMerge, BatchMergesItemByItem) {
  const auto p = extract(R"([{"meta_info":{"input_token_logprobs":[1]}},{"meta_info":{"input_token_logprobs":[2]}}])");
  EXPECT_EQ(merge(R"([{"meta_info":{"input_token_logprobs":[10]}}, {"meta_info":{"input_token_logprobs":[20]}}])", p),
            R"([{"meta_info":{"input_token_logprobs":[1,10]}}, {"meta_info":{"input_token_logprobs":[2,20]}}])");
}

TEST(LogprobMerge, ItemsMissingTheFieldAreUnchanged) {
  const auto p = extract(R"([{"meta_info":{"input_token_logprobs":[1]}},{"meta_info":{}}])");
  // Decode item 0 lacks the list, item 1's prefill lacks it, item 2 has no prefill item at all.
  const std::string decode =
      R"([{"meta_info":{}},{"meta_info":{"input_token_logprobs":[20]}},{"meta_info":{"input_token_logprobs":[30]}}])";
  EXPECT_EQ(merge(decode, p), decode);
  EXPECT_EQ(merge(R"({"text":"no meta"})", p), R"({"text":"no meta"})");
  EXPECT_EQ(merge(R"({"meta_info":{"input_token_logprobs":null}})", p), R"({"meta_info":{"input_token_logprobs":null}})");
}

TEST(LogprobMerge, InvalidDecodeBodyIsNotMerged) {
  const auto p = extract(R"({"meta_info":{"input_token_logprobs":[1]}})");
  EXPECT_EQ(pdlb::merge_input_logprobs("Internal Server Error", p), std::nullopt);
  EXPECT_EQ(pdlb::merge_input_logprobs(R"({"meta_info":)", p), std::nullopt);
}

TEST(LogprobMerge, StreamCollectsTheFirstListPerIndex) {
  prefill_logprobs p;
  pdlb::collect_stream_logprobs(R"({"text":"","meta_info":{"input_token_logprobs":[1,2]}})", p);
  pdlb::collect_stream_logprobs(R"({"text":"","meta_info":{"input_token_logprobs":[9]}})", p);
  pdlb::collect_stream_logprobs(R"({"index":2,"meta_info":{"input_token_logprobs":[3]}})", p);
  pdlb::collect_stream_logprobs(R"({"index":2,"meta_info":{"input_token_logprobs":[8]}})", p);
  pdlb::collect_stream_logprobs("[DONE]", p);
  pdlb::collect_stream_logprobs(R"({"index":-1,"meta_info":{"input_token_logprobs":[7]}})", p);
  pdlb::collect_stream_logprobs(R"({"index":1e9,"meta_info":{"input_token_logprobs":[7]}})", p);
  pdlb::collect_stream_logprobs(R"({"index":99999999999,"meta_info":{"input_token_logprobs":[7]}})", p);
  ASSERT_EQ(p.items.size(), 3u);
  EXPECT_EQ(p.items[0], "1,2");
  EXPECT_EQ(p.items[1], std::nullopt);
  EXPECT_EQ(p.items[2], "3");
}

TEST(LogprobMerge, StreamTakesTheFirstEventThatHasAList) {
  prefill_logprobs p;
  pdlb::collect_stream_logprobs(R"({"text":"","meta_info":{}})", p);
  pdlb::collect_stream_logprobs(R"({"text":"","meta_info":{"input_token_logprobs":[4]}})", p);
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0], "4");
}

TEST(LogprobMerge, StreamEventsMergeByIndex) {
  prefill_logprobs p;
  pdlb::collect_stream_logprobs(R"({"index":0,"meta_info":{"input_token_logprobs":[1]}})", p);
  pdlb::collect_stream_logprobs(R"({"index":1,"meta_info":{"input_token_logprobs":[2]}})", p);
  EXPECT_EQ(pdlb::merge_event_logprobs(R"({"index":1,"meta_info":{"input_token_logprobs":[20]}})", p),
            R"({"index":1,"meta_info":{"input_token_logprobs":[2,20]}})");
  EXPECT_EQ(pdlb::merge_event_logprobs(R"({"meta_info":{"input_token_logprobs":[10]}})", p),
            R"({"meta_info":{"input_token_logprobs":[1,10]}})");
}

TEST(LogprobMerge, StreamEventsWithNothingToMergeAreLeftAlone) {
  prefill_logprobs p;
  pdlb::collect_stream_logprobs(R"({"meta_info":{"input_token_logprobs":[1]}})", p);
  EXPECT_EQ(pdlb::merge_event_logprobs("[DONE]", p), std::nullopt);
  EXPECT_EQ(pdlb::merge_event_logprobs(R"({"index":3,"meta_info":{"input_token_logprobs":[1]}})", p), std::nullopt);
  EXPECT_EQ(pdlb::merge_event_logprobs(R"({"meta_info":{}})", p), std::nullopt);
  EXPECT_EQ(pdlb::merge_event_logprobs(R"({"index":"0","meta_info":{"input_token_logprobs":[1]}})", p), std::nullopt);
  EXPECT_EQ(pdlb::merge_event_logprobs(R"({"meta_info":{"input_token_logprobs":[1]}})", prefill_logprobs{}),
            std::nullopt);
}

TEST(LogprobMerge, LongPrefillListMergesIntoEveryEvent) {
  std::string list;
  for (int i = 0; i < 8000; ++i) list += (i ? "," : "") + std::string("[-0.") + std::to_string(i) + "," + std::to_string(i) + ",null]";
  prefill_logprobs p;
  pdlb::collect_stream_logprobs(R"({"text":"","meta_info":{"input_token_logprobs":[)" + list + "]}}", p);
  const auto merged = pdlb::merge_event_logprobs(R"({"text":"a","meta_info":{"input_token_logprobs":[[-1,5,null]]}})", p);
  ASSERT_TRUE(merged);
  const auto j = nlohmann::json::parse(*merged);
  EXPECT_EQ(j["meta_info"]["input_token_logprobs"].size(), 8001u);
  EXPECT_EQ(j["meta_info"]["input_token_logprobs"][8000][1], 5);
}

}  // namespace
