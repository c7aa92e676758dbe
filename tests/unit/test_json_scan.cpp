// GCC 12 reports false -Wrestrict overlaps for `"literal" + std::string` (GCC bug 105329).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

#include "pdlb/json_scan.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace {

using pdlb::json_type;
using pdlb::scan_json;

bool valid(std::string_view doc) {
  std::string err;
  return scan_json(doc, nullptr, &err);
}

std::string error_of(std::string_view doc) {
  std::string err;
  EXPECT_FALSE(scan_json(doc, nullptr, &err)) << doc;
  return err;
}

// A long array of integers, long enough for the 64-byte fast path, with the given separator.
std::string int_array(int n, std::string_view sep = ", ", unsigned seed = 7) {
  std::mt19937 rng(seed);
  std::string s = "[";
  for (int i = 0; i < n; ++i) {
    if (i) s += sep;
    s += std::to_string(rng() % 150000);
  }
  s += "]";
  return s;
}

TEST(JsonScan, AcceptsValidDocuments) {
  const std::vector<std::string> docs = {
      "0", "-0", "7", "-12", "1.5", "0.1", "1e-7", "1E+7", "-1.25e10", "123456789012345678901234567890",
      "true", "false", "null", R"("")", R"("a\"b\\c\/d\b\f\n\r\t")", R"("\u00e9\u65E5")",
      // Lone surrogate escapes are valid JSON text (RFC 8259 section 8.2).
      R"("\ud800")", R"("\uDC00\uD800")", "\"\xC3\xA9\xE6\x97\xA5\xF0\x9F\x98\x80\"", "[]", "{}", "[[]]",
      " \t\r\n[ 1 , 2 ]\n", R"({"a":{"b":[1,{"c":null}],"d":""},"e":[true,false]})",
      R"({"":0})", R"({"a":1,"a":2})", "\"" + std::string(100, 'x') + "\"",
      "\"" + std::string(40, 'x') + "\xE2\x82\xAC" + std::string(40, 'y') + "\"",
      int_array(1000), int_array(1000, ","), int_array(1000, " ,\n "), int_array(1000, ",\t"),
      "[" + std::string(200, ' ') + "1]", "[0" + std::string(300, ' ') + "]", "1e400", "-1e-400",
  };
  for (const auto& d : docs) EXPECT_TRUE(valid(d)) << d << ": " << error_of(d);
}

TEST(JsonScan, RejectsInvalidDocuments) {
  const std::vector<std::string> docs = {
      "", " ", "[", "]", "{", "}", "[1,]", "[,1]", "[1 2]", "[1,,2]", R"({"a" 1})", R"({"a":})", "{a:1}",
      R"({"a":1,})", R"({,"a":1})", R"({"a":1 "b":2})", "01", "-01", "00", "-", "1.", ".5", "1e", "1e+", "+1",
      "NaN", "Infinity", "-Infinity", "tru", "nul", "truex", "True", R"("abc)", R"("\x")", R"("\u12")",
      R"("\u12G4")", "\"a\tb\"", std::string("\"\x01\""), std::string("\"a\0b\"", 5), "1 2", "[1]x", "{}{}",
      "'a'", "[1]]", std::string("1\0", 2), std::string("[1,\0 2]", 7), "{\"a\":1}}", "/*c*/1", "\xEF\xBB\xBF{}",
      // Invalid UTF-8 inside strings: overlong, surrogate, above U+10FFFF, stray continuation,
      // truncated sequences, bytes that never occur.
      "\"\xC0\xAF\"", "\"\xC1\xBF\"", "\"\xE0\x80\xAF\"", "\"\xED\xA0\x80\"", "\"\xF4\x90\x80\x80\"", "\"\x80\"",
      "\"\xE2\x82\"", "\"\xE2\x82", "\"\xF0\x9F\x98\"", "\"\xFF\"", "\"\xFE\"",
      // Raw non-ASCII outside strings.
      "[\xC3\xA9]",
  };
  for (const auto& d : docs) EXPECT_FALSE(valid(d)) << d;
}

TEST(JsonScan, RejectsErrorsInsideLongIntegerArrays) {
  // The same mistakes as above, but where the SIMD integer path is running.
  const std::string good = int_array(500);
  ASSERT_TRUE(valid(good));
  const std::string body = good.substr(1, good.size() - 2);
  const std::vector<std::string> docs = {
      "[" + body + ", 01, " + body + "]", "[" + body + ",, " + body + "]", "[" + body + " 5, " + body + "]",
      "[" + body + ",]", "[" + body + ", -, " + body + "]", "[" + body + ", 1-2, " + body + "]",
      "[" + body + ", --1, " + body + "]", "[" + body + ", 00, " + body + "]", "[, " + body + "]",
      "[" + body + ", ,1, " + body + "]", "[" + body + ", 1.," + body + "]", "[" + body + ", 1x, " + body + "]",
  };
  for (const auto& d : docs) EXPECT_FALSE(valid(d)) << d.substr(0, 80);
}

TEST(JsonScan, IntegerArraysAgreeWithNlohmannUnderRandomMutation) {
  // Mutations drawn from the bytes the fast path classifies, at every block offset, so an error the
  // bit arithmetic misses would show up as a disagreement.
  std::mt19937 rng(42);
  const std::string alphabet = "0123456789, \n\t-0,";
  for (int round = 0; round < 3000; ++round) {
    std::string doc = int_array(60 + static_cast<int>(rng() % 40), round % 2 ? ", " : ",", rng());
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = 1 + rng() % (doc.size() - 2);
      switch (rng() % 3) {
        case 0: doc[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: doc.insert(doc.begin() + static_cast<std::ptrdiff_t>(at), alphabet[rng() % alphabet.size()]); break;
        default: doc.erase(at, 1); break;
      }
    }
    ASSERT_EQ(valid(doc), nlohmann::json::accept(doc)) << doc;
  }
}

TEST(JsonScan, DeepNestingIsAnErrorNotAStackOverflow) {
  const std::string arrays = std::string(100000, '[') + std::string(100000, ']');
  std::string err;
  EXPECT_FALSE(scan_json(arrays, nullptr, &err));
  EXPECT_EQ(err, "nesting deeper than 1000");
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  objects += "1" + std::string(100000, '}');
  EXPECT_FALSE(scan_json(objects, nullptr, &err));
  EXPECT_EQ(err, "nesting deeper than 1000");
}

TEST(JsonScan, AcceptsExactlyTheMaximumDepth) {
  EXPECT_TRUE(valid(std::string(1000, '[') + std::string(1000, ']')));
  EXPECT_FALSE(valid(std::string(1001, '[') + std::string(1001, ']')));
  // The top-level object counts as one level.
  EXPECT_TRUE(valid("{\"a\":" + std::string(999, '[') + std::string(999, ']') + "}"));
  EXPECT_FALSE(valid("{\"a\":" + std::string(1000, '[') + std::string(1000, ']') + "}"));
}

TEST(JsonScan, ErrorMessagesNameTheByte) {
  EXPECT_EQ(error_of("[1,]"), "invalid JSON at byte 3: expected a value");
  EXPECT_EQ(error_of("{\"a\":1 x"), "invalid JSON at byte 7: expected ',' or '}'");
  EXPECT_EQ(error_of("[1 x"), "invalid JSON at byte 3: expected ',' or ']'");
  EXPECT_EQ(error_of("\"ab\xFF\""), "invalid UTF-8 in string at byte 3");
  EXPECT_EQ(error_of("{} x"), "invalid JSON at byte 3: unexpected data after the JSON value");
  EXPECT_EQ(error_of("\"a\nb\""), "invalid JSON at byte 2: unescaped control character in string");
  EXPECT_EQ(error_of("\xEF\xBB\xBF{}"), "invalid JSON at byte 0: a byte order mark is not allowed");
  // Errors found after the integer fast path ran still point at the right byte.
  const std::string good = int_array(300, ",");
  const std::string bad = good.substr(0, good.size() - 1) + ",01]";
  EXPECT_EQ(error_of(bad), "invalid JSON at byte " + std::to_string(good.size() + 1) + ": expected ',' or ']'");
}

TEST(JsonScan, ReportsTheRootType) {
  json_type t;
  ASSERT_TRUE(scan_json(" [1] ", nullptr, nullptr, &t));
  EXPECT_EQ(t, json_type::array);
  ASSERT_TRUE(scan_json("\"s\"", nullptr, nullptr, &t));
  EXPECT_EQ(t, json_type::string);
  ASSERT_TRUE(scan_json("{}", nullptr, nullptr, &t));
  EXPECT_EQ(t, json_type::object);
  ASSERT_TRUE(scan_json("-1", nullptr, nullptr, &t));
  EXPECT_EQ(t, json_type::number);
}

TEST(JsonScan, TopLevelMemberSpansCoverKeyAndValue) {
  const std::string doc = R"( { "a" : 1 , "b":[1, 2],"c\u0041":"x" , "n":null,"o":{"p":true} } )";
  std::vector<pdlb::json_member> m;
  ASSERT_TRUE(scan_json(doc, &m, nullptr));
  ASSERT_EQ(m.size(), 5u);
  auto text = [&](std::size_t b, std::size_t e) { return doc.substr(b, e - b); };
  EXPECT_EQ(m[0].key_raw, "a");
  EXPECT_EQ(text(m[0].member_begin, m[0].member_end), R"("a" : 1)");
  EXPECT_EQ(text(m[0].value_begin, m[0].value_end), "1");
  EXPECT_EQ(m[0].type, json_type::number);
  EXPECT_EQ(text(m[1].value_begin, m[1].value_end), "[1, 2]");
  EXPECT_EQ(m[1].type, json_type::array);
  EXPECT_EQ(m[1].shape.count, 2u);
  EXPECT_EQ(m[2].key_raw, R"(c\u0041)");
  EXPECT_EQ(text(m[2].member_begin, m[2].member_end), R"("c\u0041":"x")");
  EXPECT_EQ(m[2].type, json_type::string);
  EXPECT_EQ(m[3].type, json_type::null_);
  EXPECT_EQ(text(m[4].value_begin, m[4].value_end), R"({"p":true})");
  EXPECT_EQ(m[4].type, json_type::object);
  EXPECT_TRUE(pdlb::json_key_equals(m[2].key_raw, "cA"));
  EXPECT_EQ(pdlb::find_member(m, "cA"), &m[2]);
  EXPECT_EQ(pdlb::find_member(m, "zz"), nullptr);
}

TEST(JsonScan, FindMemberReturnsTheLastDuplicate) {
  std::vector<pdlb::json_member> m;
  ASSERT_TRUE(scan_json(R"({"stream":false,"x":1,"stream":true})", &m, nullptr));
  const auto* s = pdlb::find_member(m, "stream");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s, &m[2]);
}

TEST(JsonScan, NonObjectRootsGiveNoMembers) {
  std::vector<pdlb::json_member> m{pdlb::json_member{}};
  ASSERT_TRUE(scan_json("[1,2]", &m, nullptr));
  EXPECT_TRUE(m.empty());
}

TEST(JsonScan, ArrayShapeDescribesElements) {
  std::vector<pdlb::json_member> m;
  const std::string ids = int_array(2000);
  const std::string doc = R"({"t":["a","b","c"],"i":)" + ids + R"(,"f":[1,2.5],"n":[[1,2],[3]],"e":[[1],[]],)" +
                          R"("x":[1,"a"],"nf":[[1],[2e3]],"no":[{"a":[1.5]}],"s":"str"})";
  ASSERT_TRUE(scan_json(doc, &m, nullptr));
  const auto bit = pdlb::json_type_bit;
  auto shape = [&](std::string_view k) { return pdlb::find_member(m, k)->shape; };
  EXPECT_EQ(shape("t").count, 3u);
  EXPECT_EQ(shape("t").item_types, bit(json_type::string));
  EXPECT_EQ(shape("i").count, 2000u);
  EXPECT_EQ(shape("i").item_types, bit(json_type::number));
  EXPECT_TRUE(shape("i").items_integral);
  EXPECT_FALSE(shape("f").items_integral);
  EXPECT_EQ(shape("n").count, 2u);
  EXPECT_EQ(shape("n").item_types, bit(json_type::array));
  EXPECT_EQ(shape("n").sub_item_types, bit(json_type::number));
  EXPECT_TRUE(shape("n").sub_items_integral);
  EXPECT_FALSE(shape("n").has_empty_sub_array);
  EXPECT_TRUE(shape("e").has_empty_sub_array);
  EXPECT_EQ(shape("x").item_types, bit(json_type::number) | bit(json_type::string));
  EXPECT_FALSE(shape("nf").sub_items_integral);
  // Elements of objects inside the array are not the array's sub-items.
  EXPECT_EQ(shape("no").sub_item_types, 0);
  EXPECT_EQ(shape("s").count, 0u);
}

TEST(JsonScan, LongNestedIntegerArraysAreCounted) {
  std::string doc = "{\"input_ids\":[";
  for (int i = 0; i < 5; ++i) doc += (i ? "," : "") + int_array(700, ", ", static_cast<unsigned>(i));
  doc += "]}";
  std::vector<pdlb::json_member> m;
  ASSERT_TRUE(scan_json(doc, &m, nullptr));
  EXPECT_EQ(m[0].shape.count, 5u);
  EXPECT_EQ(m[0].shape.sub_item_types, pdlb::json_type_bit(json_type::number));
  EXPECT_TRUE(m[0].shape.sub_items_integral);
}

TEST(JsonScan, ObjectMembersAndArrayElementsUseDocumentOffsets) {
  const std::string doc = R"({"meta":{"k":[1, "two", {"x":3}]}})";
  std::vector<pdlb::json_member> top, inner;
  ASSERT_TRUE(scan_json(doc, &top, nullptr));
  ASSERT_TRUE(pdlb::object_members(doc, top[0].value_begin, top[0].value_end, inner));
  ASSERT_EQ(inner.size(), 1u);
  EXPECT_EQ(inner[0].key_raw, "k");
  std::vector<pdlb::json_value_span> els;
  ASSERT_TRUE(pdlb::array_elements(doc, inner[0].value_begin, inner[0].value_end, els));
  ASSERT_EQ(els.size(), 3u);
  EXPECT_EQ(doc.substr(els[1].begin, els[1].end - els[1].begin), "\"two\"");
  EXPECT_EQ(els[2].type, json_type::object);
  EXPECT_FALSE(pdlb::object_members(doc, inner[0].value_begin, inner[0].value_end, inner));
  EXPECT_FALSE(pdlb::array_elements(doc, 0, doc.size(), els));
}

TEST(JsonScan, DecodesStrings) {
  EXPECT_EQ(pdlb::decode_json_string(R"(a\"b\\c\/\n\t)"), "a\"b\\c/\n\t");
  EXPECT_EQ(pdlb::decode_json_string(R"(\u00e9\u65e5)"), "\xC3\xA9\xE6\x97\xA5");
  EXPECT_EQ(pdlb::decode_json_string(R"(\ud83d\ude00)"), "\xF0\x9F\x98\x80");
  EXPECT_EQ(pdlb::decode_json_string(R"(\ud800x)"), "\xEF\xBF\xBDx");
  EXPECT_EQ(pdlb::decode_json_string("\xC3\xA9"), "\xC3\xA9");
  EXPECT_EQ(pdlb::decode_json_string(R"(\q)"), std::nullopt);
  EXPECT_EQ(pdlb::decode_json_string("\xFF"), std::nullopt);
}

TEST(JsonScan, HelpersForNumbersAndWhitespace) {
  EXPECT_TRUE(pdlb::json_number_is_integer("-120"));
  EXPECT_FALSE(pdlb::json_number_is_integer("1.0"));
  EXPECT_FALSE(pdlb::json_number_is_integer("1e3"));
  EXPECT_EQ(pdlb::trim_json_whitespace(" \n\t1, 2\r "), "1, 2");
  EXPECT_EQ(pdlb::trim_json_whitespace("  "), "");
}

// Random documents from nlohmann, then random byte edits: both parsers must agree. Documents where
// the two are allowed to differ (escaped surrogates, which nlohmann rejects when unpaired) are skipped.
nlohmann::json random_json(std::mt19937& rng, int depth) {
  switch (depth > 4 ? rng() % 4 : rng() % 7) {
    case 0: return nullptr;
    case 1: return rng() % 2 == 0;
    case 2: return static_cast<std::int64_t>(rng()) - (1LL << 31);
    case 3: {
      std::string s;
      const char* pieces[] = {"a", "\"", "\\", "\n", "\xC3\xA9", "\xF0\x9F\x98\x80", " ", "\x01", "z"};
      for (unsigned i = rng() % 8; i > 0; --i) s += pieces[rng() % 9];
      return s;
    }
    case 4: return std::uniform_real_distribution<double>(-1e6, 1e6)(rng);
    case 5: {
      auto a = nlohmann::json::array();
      for (unsigned i = rng() % 5; i > 0; --i) a.push_back(random_json(rng, depth + 1));
      return a;
    }
    default: {
      auto o = nlohmann::json::object();
      for (unsigned i = rng() % 5; i > 0; --i) o["k" + std::to_string(rng() % 10)] = random_json(rng, depth + 1);
      return o;
    }
  }
}

// nlohmann rejects numbers a double cannot hold (1e400); JSON and Python's json module accept them.
bool nlohmann_number_overflow(const std::string& doc) {
  try {
    const auto parsed = nlohmann::json::parse(doc);
    (void)parsed;
  } catch (const nlohmann::json::out_of_range&) {
    return true;
  } catch (const nlohmann::json::exception&) {
  }
  return false;
}

TEST(JsonScan, AgreesWithNlohmannOnRandomDocuments) {
  std::mt19937 rng(1234);
  const std::string noise = "{}[]\",:0123456789-+.eE tfnul\\\xC3\xA9\x80";
  for (int round = 0; round < 5000; ++round) {
    std::string doc = random_json(rng, 0).dump(rng() % 2 ? -1 : 1);
    ASSERT_TRUE(valid(doc)) << doc;
    for (unsigned e = rng() % 3; e > 0 && !doc.empty(); --e) {
      const std::size_t at = rng() % doc.size();
      if (rng() % 2) {
        doc[at] = noise[rng() % noise.size()];
      } else {
        doc.erase(at, 1);
      }
    }
    if (doc.find("\\u") != std::string::npos || nlohmann_number_overflow(doc)) continue;
    ASSERT_EQ(valid(doc), nlohmann::json::accept(doc)) << doc;
  }
}

}  // namespace

namespace {

TEST(JsonScan, AppendSplicedCopiesLargeAndSmallPieces) {
  std::string big(10000, 'a');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  std::string out = "x";
  pdlb::append_spliced(out, big);
  pdlb::append_spliced(out, "yz");
  pdlb::append_spliced(out, "");
  EXPECT_EQ(out, "x" + big + "yz");
}

}  // namespace
