// GCC 12 reports false -Wrestrict overlaps for `"literal" + std::string` (GCC bug 105329).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include "pdlb/rewrite.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace {

using pdlb::inspect_request;
using pdlb::route_kind;

pdlb::request_info inspect_ok(std::string_view body, route_kind kind = route_kind::generate) {
  auto r = inspect_request(body, kind);
  EXPECT_TRUE(r.ok) << body << ": " << r.error;
  return r.info;
}

std::string inspect_error(std::string_view body, route_kind kind = route_kind::generate) {
  auto r = inspect_request(body, kind);
  EXPECT_FALSE(r.ok) << body;
  return r.error;
}

std::string rewrite(std::string_view body, pdlb::bootstrap_fields boot, std::vector<std::uint64_t> rooms,
                    route_kind kind = route_kind::generate) {
  const auto info = inspect_ok(body, kind);
  return pdlb::rewrite_request(body, info, boot, rooms);
}

const pdlb::bootstrap_fields local{"127.0.0.1", 8998};

TEST(Inspect, RejectsBodiesThatAreNotObjects) {
  EXPECT_EQ(inspect_error("[1,2]"), "request body must be a JSON object");
  EXPECT_EQ(inspect_error("\"text\""), "request body must be a JSON object");
  EXPECT_EQ(inspect_error("null"), "request body must be a JSON object");
}

TEST(Inspect, InvalidJsonGivesTheScannerMessage) {
  EXPECT_EQ(inspect_error("{\"text\":\"hi\",}"), "invalid JSON at byte 13: expected a string key");
  EXPECT_EQ(inspect_error(""), "invalid JSON at byte 0: expected a value");
}

TEST(Inspect, StreamIsFalseWhenAbsentOrNull) {
  EXPECT_FALSE(inspect_ok(R"({"text":"hi"})").stream);
  EXPECT_FALSE(inspect_ok(R"({"text":"hi","stream":null})").stream);
  EXPECT_FALSE(inspect_ok(R"({"text":"hi","stream":false})").stream);
  EXPECT_TRUE(inspect_ok(R"({"text":"hi","stream":true})").stream);
  EXPECT_TRUE(inspect_ok(R"({"stream" : true })", route_kind::openai).stream);
}

TEST(Inspect, StreamMustBeABoolean) {
  EXPECT_EQ(inspect_error(R"({"text":"hi","stream":"yes"})"), "\"stream\" must be a boolean");
  EXPECT_EQ(inspect_error(R"({"stream":1})", route_kind::openai), "\"stream\" must be a boolean");
}

TEST(Inspect, ReturnLogprobFollowsTheSameRules) {
  EXPECT_FALSE(inspect_ok(R"({"text":"hi"})").return_logprob);
  EXPECT_FALSE(inspect_ok(R"({"text":"hi","return_logprob":null})").return_logprob);
  EXPECT_TRUE(inspect_ok(R"({"text":"hi","return_logprob":true})").return_logprob);
  EXPECT_EQ(inspect_error(R"({"return_logprob":[]})"), "\"return_logprob\" must be a boolean");
}

TEST(Inspect, TheLastDuplicateKeyWins) {
  EXPECT_TRUE(inspect_ok(R"({"stream":false,"stream":true})").stream);
}

TEST(Inspect, EscapedKeysAreRecognised) {
  EXPECT_TRUE(inspect_ok(R"({"str\u0065am":true})").stream);
}

TEST(Inspect, TextStringIsSingle) {
  EXPECT_EQ(inspect_ok(R"({"text":"hi"})").batch_size, std::nullopt);
}

TEST(Inspect, TextListIsABatchOfItsLength) {
  EXPECT_EQ(inspect_ok(R"({"text":["a","b","c"]})").batch_size, 3u);
  EXPECT_EQ(inspect_ok(R"({"text":["a"]})").batch_size, 1u);
}

TEST(Inspect, TextOfOtherShapesIsAnError) {
  EXPECT_EQ(inspect_error(R"({"text":5})"), "\"text\" must be a string or a list of strings");
  EXPECT_EQ(inspect_error(R"({"text":["a",1]})"), "\"text\" must be a string or a list of strings");
  EXPECT_EQ(inspect_error(R"({"text":{"a":"b"}})"), "\"text\" must be a string or a list of strings");
  EXPECT_EQ(inspect_error(R"({"text":[]})"), "empty batch: \"text\" is an empty list");
}

TEST(Inspect, NullTextFallsBackToInputIds) {
  EXPECT_EQ(inspect_ok(R"({"text":null,"input_ids":[[1],[2]]})").batch_size, 2u);
}

TEST(Inspect, TextTakesPrecedenceOverInputIds) {
  EXPECT_EQ(inspect_ok(R"({"text":"hi","input_ids":[[1],[2]]})").batch_size, std::nullopt);
}

TEST(Inspect, InputIdsOfIntegersIsSingle) {
  EXPECT_EQ(inspect_ok(R"({"input_ids":[1,2,3]})").batch_size, std::nullopt);
  EXPECT_EQ(inspect_ok(R"({"input_ids":[0]})").batch_size, std::nullopt);
}

TEST(Inspect, InputIdsOfListsIsABatchOfItsLength) {
  EXPECT_EQ(inspect_ok(R"({"input_ids":[[1,2],[3],[4,5,6]]})").batch_size, 3u);
}

TEST(Inspect, MalformedInputIdsAreErrors) {
  const std::string shape = "\"input_ids\" must be a list of integers or a list of lists of integers";
  EXPECT_EQ(inspect_error(R"({"input_ids":"x"})"), shape);
  EXPECT_EQ(inspect_error(R"({"input_ids":7})"), shape);
  EXPECT_EQ(inspect_error(R"({"input_ids":[1.5]})"), shape);
  EXPECT_EQ(inspect_error(R"({"input_ids":[1,"2"]})"), shape);
  EXPECT_EQ(inspect_error(R"({"input_ids":[[1],2]})"), shape);
  EXPECT_EQ(inspect_error(R"({"input_ids":[[1],[2e3]]})"), shape);
  EXPECT_EQ(inspect_error(R"({"input_ids":[[1],["a"]]})"), shape);
  EXPECT_EQ(inspect_error(R"({"input_ids":[]})"), "empty batch: \"input_ids\" is an empty list");
  EXPECT_EQ(inspect_error(R"({"input_ids":[[]]})"), "empty prompt: \"input_ids\" contains an empty list");
}

TEST(Inspect, NoPromptAtAllIsSingle) {
  EXPECT_EQ(inspect_ok(R"({"sampling_params":{}})").batch_size, std::nullopt);
  EXPECT_EQ(inspect_ok(R"({"input_ids":null})").batch_size, std::nullopt);
}

TEST(Inspect, OpenAiRoutesNeverBatch) {
  EXPECT_EQ(inspect_ok(R"({"prompt":["a","b"],"text":["a","b"]})", route_kind::openai).batch_size, std::nullopt);
  EXPECT_EQ(inspect_ok(R"({"input_ids":"whatever"})", route_kind::openai).batch_size, std::nullopt);
}

TEST(Rewrite, SingleRequestGetsScalarFields) {
  EXPECT_EQ(rewrite(R"({"text":"hi","stream":false})", local, {1234}),
            R"({"text":"hi","stream":false,"bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":1234})");
}

TEST(Rewrite, TextBatchGetsListsWithOneRoomPerItem) {
  EXPECT_EQ(rewrite(R"({"text":["a","b"]})", {"h", 8998}, {11, 22}),
            R"({"text":["a","b"],"bootstrap_host":["h","h"],"bootstrap_port":[8998,8998],"bootstrap_room":[11,22]})");
}

TEST(Rewrite, InputIdsBatchGetsLists) {
  EXPECT_EQ(rewrite(R"({"input_ids":[[1,2],[3],[4]]})", {"h", 1}, {1, 2, 3}),
            R"({"input_ids":[[1,2],[3],[4]],"bootstrap_host":["h","h","h"],"bootstrap_port":[1,1,1],)"
            R"("bootstrap_room":[1,2,3]})");
}

TEST(Rewrite, NullPortIsWrittenAsNull) {
  EXPECT_EQ(rewrite(R"({"text":"x"})", {"h", std::nullopt}, {5}),
            R"({"text":"x","bootstrap_host":"h","bootstrap_port":null,"bootstrap_room":5})");
  EXPECT_EQ(rewrite(R"({"text":["x","y"]})", {"h", std::nullopt}, {5, 6}),
            R"({"text":["x","y"],"bootstrap_host":["h","h"],"bootstrap_port":[null,null],"bootstrap_room":[5,6]})");
}

TEST(Rewrite, Ipv6HostKeepsItsBrackets) {
  EXPECT_EQ(rewrite(R"({"text":"x"})", {"[::1]", 9000}, {0}),
            R"({"text":"x","bootstrap_host":"[::1]","bootstrap_port":9000,"bootstrap_room":0})");
}

TEST(Rewrite, LargestRoomIsAPlainInteger) {
  const std::uint64_t max_room = (std::uint64_t{1} << 63) - 1;
  const auto out = rewrite(R"({"text":"x"})", local, {max_room});
  EXPECT_NE(out.find("\"bootstrap_room\":9223372036854775807}"), std::string::npos) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["bootstrap_room"].get<std::uint64_t>(), max_room);
}

TEST(Rewrite, ClientBootstrapFieldsAreReplaced) {
  EXPECT_EQ(rewrite(R"({"bootstrap_room":1,"text":"x","bootstrap_host":"evil","bootstrap_port":2,"a":1})", local, {7}),
            R"({"text":"x","a":1,"bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":7})");
  EXPECT_EQ(rewrite(R"({"text":"x","bootstrap_room":1})", local, {7}),
            R"({"text":"x","bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":7})");
  EXPECT_EQ(rewrite(R"({ "bootstrap_room" : 1 , "bootstrap_room":2 })", local, {7}),
            R"({ "bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":7 })");
  // An escaped spelling of the key is the same key to the backend's parser.
  EXPECT_EQ(rewrite(R"({"bootstrap\u005froom":1,"text":"x"})", local, {7}),
            R"({"text":"x","bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":7})");
}

TEST(Rewrite, NestedBootstrapKeysAreLeftAlone) {
  EXPECT_EQ(rewrite(R"({"sampling_params":{"bootstrap_room":1}})", local, {7}),
            R"({"sampling_params":{"bootstrap_room":1},"bootstrap_host":"127.0.0.1","bootstrap_port":8998,)"
            R"("bootstrap_room":7})");
}

TEST(Rewrite, EmptyObjectGetsNoLeadingComma) {
  EXPECT_EQ(rewrite("{}", local, {3}), R"({"bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":3})");
  EXPECT_EQ(rewrite(" { \n } ", local, {3}),
            R"( { )" "\n" R"( "bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":3} )");
}

TEST(Rewrite, WhitespaceInsideTheBodyIsPreserved) {
  EXPECT_EQ(rewrite("\n{ \"text\" :\t\"hi\" ,\n  \"x\": [ 1 , 2 ]\n}\n", local, {9}),
            "\n{ \"text\" :\t\"hi\" ,\n  \"x\": [ 1 , 2 ],\"bootstrap_host\":\"127.0.0.1\",\"bootstrap_port\":8998,"
            "\"bootstrap_room\":9\n}\n");
}

TEST(Rewrite, ValuesPassByteForByte) {
  const std::string body =
      R"({"text":"\u00e9 \ud83d\ude00 日本","big":123456789012345678901234567890,"f":1e-7,"g":0.1,)"
      R"("n":{"a":[[[{"b":null}]]]},"s":"a\"b"})";
  const auto out = rewrite(body, local, {1});
  EXPECT_EQ(out.substr(0, body.size() - 1), body.substr(0, body.size() - 1));
}

TEST(Rewrite, OpenAiRequestGetsScalarFieldsEvenWithListPrompt) {
  EXPECT_EQ(rewrite(R"({"prompt":["a","b"]})", local, {4}, route_kind::openai),
            R"({"prompt":["a","b"],"bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":4})");
}

TEST(Rewrite, HostIsEscapedAsAJsonString) {
  EXPECT_EQ(rewrite("{}", {"a\"b", 1}, {1}), R"({"bootstrap_host":"a\"b","bootstrap_port":1,"bootstrap_room":1})");
}

TEST(Rewrite, AppendsToAReusedBuffer) {
  const std::string body = R"({"text":"x"})";
  const auto info = inspect_ok(body);
  std::string out = "prefix:";
  const std::uint64_t room = 5;
  pdlb::rewrite_request(body, info, local, std::span<const std::uint64_t>(&room, 1), out);
  EXPECT_EQ(out, R"(prefix:{"text":"x","bootstrap_host":"127.0.0.1","bootstrap_port":8998,"bootstrap_room":5})");
}

// Every field of a random body survives the rewrite with its value, and the three fields are there.
TEST(Rewrite, RandomBodiesKeepEveryFieldAccordingToNlohmann) {
  std::mt19937_64 rng(99);
  auto random_value = [&](auto& self, int depth) -> nlohmann::json {
    switch (depth > 3 ? rng() % 5 : rng() % 7) {
      case 0: return nullptr;
      case 1: return rng() % 2 == 0;
      case 2: return static_cast<std::int64_t>(rng() >> 1);
      case 3: return std::uniform_real_distribution<double>(-1e9, 1e9)(rng);
      case 4: {
        const char* pieces[] = {"a", "\"", "\\", "\n", "\xC3\xA9", "\xF0\x9F\x98\x80", " ", "\x01", "bootstrap_room"};
        std::string s;
        for (unsigned i = rng() % 6; i > 0; --i) s += pieces[rng() % 9];
        return s;
      }
      case 5: {
        auto a = nlohmann::json::array();
        for (unsigned i = rng() % 4; i > 0; --i) a.push_back(self(self, depth + 1));
        return a;
      }
      default: {
        auto o = nlohmann::json::object();
        for (unsigned i = rng() % 4; i > 0; --i) o["k" + std::to_string(rng() % 6)] = self(self, depth + 1);
        return o;
      }
    }
  };
  const char* keys[] = {"sampling_params", "k1", "k2", "bootstrap_room", "bootstrap_host", "rid", "é", "stream"};
  for (int round = 0; round < 2000; ++round) {
    nlohmann::json in = nlohmann::json::object();
    for (unsigned i = rng() % 7; i > 0; --i) in[keys[rng() % 8]] = random_value(random_value, 1);
    if (in.contains("stream")) in["stream"] = rng() % 2 == 0;
    const std::string body = in.dump(rng() % 2 ? -1 : static_cast<int>(rng() % 3));
    const auto r = inspect_request(body, route_kind::generate);
    ASSERT_TRUE(r.ok) << body << ": " << r.error;
    const std::uint64_t room = rng() >> 1;
    const std::string out =
        pdlb::rewrite_request(body, r.info, {"10.0.0.1", 8998}, std::span<const std::uint64_t>(&room, 1));
    ASSERT_TRUE(nlohmann::json::accept(out)) << out;
    const auto parsed = nlohmann::json::parse(out);
    for (const auto& [k, v] : in.items()) {
      if (k.rfind("bootstrap_", 0) == 0) continue;
      ASSERT_TRUE(parsed.contains(k)) << out;
      ASSERT_EQ(parsed[k], v) << out;
    }
    ASSERT_EQ(parsed.size(), in.size() + 3 - (in.contains("bootstrap_room") + in.contains("bootstrap_host")));
    EXPECT_EQ(parsed["bootstrap_host"], "10.0.0.1");
    EXPECT_EQ(parsed["bootstrap_port"], 8998);
    EXPECT_EQ(parsed["bootstrap_room"].get<std::uint64_t>(), room);
  }
}

// A large /generate body, as in the throughput benchmark, is inspected as a single prompt.
TEST(Rewrite, LargeInputIdsBodyRoundTrips) {
  std::string body = "{\"input_ids\":[";
  for (int i = 0; i < 8000; ++i) body += (i ? ", " : "") + std::to_string((i * 7919) % 128000);
  body += "],\"sampling_params\":{\"temperature\":0,\"max_new_tokens\":16}}";
  const auto info = inspect_ok(body);
  EXPECT_EQ(info.batch_size, std::nullopt);
  const auto out = rewrite(body, local, {42});
  const auto parsed = nlohmann::json::parse(out);
  EXPECT_EQ(parsed["input_ids"].size(), 8000u);
  EXPECT_EQ(parsed["input_ids"], nlohmann::json::parse(body)["input_ids"]);
  EXPECT_EQ(parsed["bootstrap_room"], 42);
}

}  // namespace
