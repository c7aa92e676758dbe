#include "model.hpp"

#include <array>
#include <cmath>
#include <cstdio>

namespace pdlb::sim {

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// Short, distinct, ASCII-only words: a stop string in a test can name one of them.
constexpr std::array<std::string_view, 64> words{
    " the",   " quick", " brown", " fox",    " jumps", " over",  " lazy",   " dog",
    " alpha", " beta",  " gamma", " delta",  " sim",   " token", " load",   " balance",
    " red",   " green", " blue",  " cyan",   " one",   " two",   " three",  " four",
    " river", " stone", " cloud", " rain",   " north", " south", " east",   " west",
    " apple", " pear",  " plum",  " fig",    " cat",   " owl",   " bee",    " elk",
    " sun",   " moon",  " star",  " sky",    " iron",  " gold",  " salt",   " glass",
    " fast",  " slow",  " warm",  " cold",   " left",  " right", " up",     " down",
    " bread", " milk",  " tea",   " rice",   " paper", " ink",   " lamp",   " door"};

double round4(double v) { return std::round(v * 10000.0) / 10000.0; }

}  // namespace

std::vector<std::int32_t> tokenize(std::string_view text, unsigned chars_per_token) {
  std::vector<std::int32_t> ids;
  if (chars_per_token == 0) chars_per_token = 1;
  if (text.empty()) {
    ids.push_back(1);
    return ids;
  }
  ids.reserve(text.size() / chars_per_token + 1);
  for (std::size_t i = 0; i < text.size(); i += chars_per_token) {
    auto piece = text.substr(i, chars_per_token);
    ids.push_back(static_cast<std::int32_t>(fnv1a(piece) % vocab_size));
  }
  return ids;
}

std::uint64_t prompt_seed(const std::vector<std::int32_t>& ids) {
  std::uint64_t h = 0x5eed5eed5eedull ^ ids.size();
  for (auto id : ids) h = splitmix64(h ^ static_cast<std::uint32_t>(id));
  return h;
}

std::int32_t output_token(std::uint64_t seed, std::size_t i) {
  return static_cast<std::int32_t>(splitmix64(seed + 0x1000 * (i + 1)) % vocab_size);
}

std::string_view token_text(std::int32_t id) {
  return words[static_cast<std::uint32_t>(id) % words.size()];
}

double output_logprob(std::uint64_t seed, std::size_t i) {
  auto h = splitmix64(seed ^ (0xabcdefull + i * 0x9e37ull));
  return round4(-static_cast<double>(h % 50000) / 10000.0);
}

double input_logprob(std::int32_t id, std::size_t pos) {
  auto h = splitmix64(static_cast<std::uint64_t>(static_cast<std::uint32_t>(id)) * 131 + pos);
  return round4(-static_cast<double>(h % 80000) / 10000.0);
}

void append_logprob(std::string& out, double v) {
  char buf[32];
  int n = std::snprintf(buf, sizeof buf, "%.4f", v);
  out.append(buf, static_cast<std::size_t>(n));
}

}  // namespace pdlb::sim
