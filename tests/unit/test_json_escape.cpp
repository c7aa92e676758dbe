#include "pdlb/json_escape.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace pdlb {
namespace {

TEST(JsonEscape, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(json_string("a\"b\\c\nd\x01"), R"("a\"b\\c\nd\u0001")");
}

TEST(JsonEscape, KeepsValidUtf8AsItIs) {
  const std::string s = "h\xc3\xa9llo \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80";  // é, 你好, 😀
  EXPECT_EQ(json_string(s), "\"" + s + "\"");
}

TEST(JsonEscape, ReplacesEveryByteOutsideValidUtf8WithReplacementCharacter) {
  // A lone lead byte, a stray continuation byte, an overlong form, a surrogate, a cut sequence.
  const std::string s = "/\xe3 \x80 \xc0\xaf \xed\xa0\x80 \xe4\xbd";
  const std::string out = json_string(s);
  auto j = nlohmann::json::parse(out, nullptr, false);  // nlohmann rejects invalid UTF-8
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(out, R"("/\ufffd \ufffd \ufffd\ufffd \ufffd\ufffd\ufffd \ufffd\ufffd")");
}

}  // namespace
}  // namespace pdlb
