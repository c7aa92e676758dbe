// Fake SGLang PD workers for fuzz_http_session (see http_session_fakes.hpp).
#include "http_session_fakes.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>

#include "pdlb/http_server.hpp"  // json_error_body, and the pdlb::net/http aliases

#include <sys/prctl.h>
#include <unistd.h>

namespace pdlb_fuzz {
namespace {

using json = nlohmann::json;
namespace net = pdlb::net;
namespace beast = pdlb::beast;
namespace http = pdlb::http;
using tcp = net::ip::tcp;
using request = http::request<http::string_body>;

enum class role { prefill, decode };
enum class api_kind { generate, completions, chat };

struct gen_request {
  api_kind kind = api_kind::generate;
  bool batch = false;
  std::size_t items = 1;
  bool stream = false;
  bool logprob = false;
  bool include_usage = false;
  int tokens = 4;
  std::size_t prompt_tokens = 1;
  std::string fault;  // the kind, for this worker's role; empty if none
};

std::string error_json(std::string_view message) { return pdlb::json_error_body(message); }

std::string tok(int i) { return " t" + std::to_string(i); }

json token_logprobs(std::size_t n, bool first_null) {
  json list = json::array();
  for (std::size_t i = 0; i < n; ++i)
    list.push_back(json::array({i == 0 && first_null ? json(nullptr) : json(-0.5 - 0.25 * static_cast<double>(i % 4)),
                                static_cast<int>(100 + i), nullptr}));
  return list;
}

// One /generate item after `done` of `g.tokens` tokens.
json generate_item(const gen_request& g, role r, std::size_t index, int done, bool final_event,
                   bool with_index) {
  std::string text;
  json ids = json::array();
  for (int i = 0; i < done; ++i) {
    text += tok(i);
    ids.push_back(1000 + i);
  }
  json meta = {{"id", "fz-" + std::to_string(index)},
               {"finish_reason", final_event ? json{{"type", "length"}, {"length", g.tokens}} : json(nullptr)},
               {"prompt_tokens", g.prompt_tokens},
               {"completion_tokens", done},
               {"cached_tokens", 0}};
  if (g.logprob) {
    // The prefill computes the prompt's logprobs; the decode has only its own (pdlb merges them).
    meta["input_token_logprobs"] =
        r == role::prefill ? token_logprobs(std::min<std::size_t>(g.prompt_tokens, 32), true) : token_logprobs(1, false);
    meta["output_token_logprobs"] = token_logprobs(static_cast<std::size_t>(done), false);
  }
  json item = {{"text", text}, {"output_ids", ids}, {"meta_info", meta}};
  if (with_index) item["index"] = index;
  return item;
}

json usage(const gen_request& g, int done) {
  return {{"prompt_tokens", g.prompt_tokens},
          {"total_tokens", g.prompt_tokens + static_cast<std::size_t>(done)},
          {"completion_tokens", done}};
}

json openai_whole(const gen_request& g) {
  std::string text;
  for (int i = 0; i < g.tokens; ++i) text += tok(i);
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", "length"}, {"matched_stop", nullptr}};
  if (g.kind == api_kind::chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  return {{"id", "fz"},
          {"object", g.kind == api_kind::chat ? "chat.completion" : "text_completion"},
          {"created", 0},
          {"model", "fuzz-model"},
          {"choices", json::array({choice})},
          {"usage", usage(g, g.tokens)}};
}

json openai_chunk(const gen_request& g, int i, bool final_event) {
  json choice = {{"index", 0},
                 {"logprobs", nullptr},
                 {"finish_reason", final_event ? json("length") : json(nullptr)},
                 {"matched_stop", nullptr}};
  if (g.kind == api_kind::chat)
    choice["delta"] = i < 0 ? json{{"role", "assistant"}, {"content", ""}} : json{{"content", final_event ? "" : tok(i)}};
  else
    choice["text"] = final_event || i < 0 ? "" : tok(i);
  return {{"id", "fz"},
          {"object", g.kind == api_kind::chat ? "chat.completion.chunk" : "text_completion"},
          {"created", 0},
          {"model", "fuzz-model"},
          {"choices", json::array({choice})},
          {"usage", nullptr}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string event(const json& j) { return "data: " + dump(j) + "\n\n"; }

// The whole stream as a list of events (each written as one chunk).
std::vector<std::string> stream_events(const gen_request& g, role r) {
  std::vector<std::string> events;
  if (g.kind == api_kind::generate) {
    if (r == role::prefill) {
      // The prefill sends one event per item (its logprobs), then [DONE].
      for (std::size_t i = 0; i < g.items; ++i)
        events.push_back(event(generate_item(g, r, i, std::min(g.tokens, 1), true, g.batch)));
    } else {
      for (std::size_t i = 0; i < g.items; ++i)
        for (int t = 1; t <= g.tokens; ++t)
          events.push_back(event(generate_item(g, r, i, t, t == g.tokens, g.batch)));
      if (g.tokens == 0)
        for (std::size_t i = 0; i < g.items; ++i) events.push_back(event(generate_item(g, r, i, 0, true, g.batch)));
    }
  } else {
    if (g.kind == api_kind::chat) events.push_back(event(openai_chunk(g, -1, false)));
    int n = r == role::prefill ? std::min(g.tokens, 1) : g.tokens;
    for (int t = 0; t < n; ++t) events.push_back(event(openai_chunk(g, t, false)));
    events.push_back(event(openai_chunk(g, n, true)));
    if (g.include_usage) {
      json u = openai_chunk(g, n, false);
      u["choices"] = json::array();
      u["usage"] = usage(g, n);
      events.push_back(event(u));
    }
  }
  events.push_back("data: [DONE]\n\n");
  return events;
}

std::string whole_body(const gen_request& g, role r) {
  if (g.kind != api_kind::generate) {
    gen_request h = g;
    if (r == role::prefill) h.tokens = std::min(g.tokens, 1);
    return dump(openai_whole(h));
  }
  int n = r == role::prefill ? std::min(g.tokens, 1) : g.tokens;
  if (!g.batch) return dump(generate_item(g, r, 0, n, true, false));
  json list = json::array();
  for (std::size_t i = 0; i < g.items; ++i) list.push_back(generate_item(g, r, i, n, true, false));
  return dump(list);
}

// Reads what the fake needs from the (rewritten) request body; false if it is not a JSON object.
bool parse_gen(std::string_view body, std::string_view path, role r, gen_request& g) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  g.kind = path == "/generate" ? api_kind::generate : path == "/v1/completions" ? api_kind::completions : api_kind::chat;
  auto flag = [&](const char* name) {
    auto it = j.find(name);
    return it != j.end() && it->is_boolean() && it->get<bool>();
  };
  g.stream = flag("stream");
  g.logprob = flag("return_logprob");
  if (auto so = j.find("stream_options"); so != j.end() && so->is_object()) {
    auto iu = so->find("include_usage");
    g.include_usage = iu != so->end() && iu->is_boolean() && iu->get<bool>();
  }
  auto number = [](const json& v, int fallback) {
    if (!v.is_number_integer()) return fallback;
    auto x = v.get<std::int64_t>();
    return static_cast<int>(std::clamp<std::int64_t>(x, 0, 16));
  };
  if (g.kind == api_kind::generate) {
    if (auto sp = j.find("sampling_params"); sp != j.end() && sp->is_object())
      if (auto m = sp->find("max_new_tokens"); m != sp->end()) g.tokens = number(*m, g.tokens);
    auto text = j.find("text");
    auto ids = j.find("input_ids");
    if (text != j.end() && text->is_array()) {
      g.batch = true;
      g.items = text->size();
      g.prompt_tokens = 3;
    } else if (ids != j.end() && ids->is_array() && !ids->empty() && ids->front().is_array()) {
      g.batch = true;
      g.items = ids->size();
      g.prompt_tokens = ids->front().size();
    } else if (ids != j.end() && ids->is_array()) {
      g.prompt_tokens = std::max<std::size_t>(ids->size(), 1);
    } else if (text != j.end() && text->is_string()) {
      g.prompt_tokens = text->get_ref<const std::string&>().size() / 4 + 1;
    }
  } else {
    for (const char* name : {"max_tokens", "max_completion_tokens"})
      if (auto m = j.find(name); m != j.end()) g.tokens = number(*m, g.tokens);
    g.prompt_tokens = body.size() / 16 + 1;
  }
  // Keeps every answer fast: a batch of thousands of prompts gets fewer tokens each.
  g.items = std::min<std::size_t>(g.items, 4096);
  if (g.items * static_cast<std::size_t>(g.tokens) > 2048)
    g.tokens = static_cast<int>(std::max<std::size_t>(1, 2048 / g.items));
  if (auto f = j.find("fuzz_fault"); f != j.end() && f->is_string()) {
    std::string_view fault = f->get_ref<const std::string&>();
    std::string_view prefix = r == role::prefill ? "prefill_" : "decode_";
    if (fault.substr(0, prefix.size()) == prefix) g.fault = std::string(fault.substr(prefix.size()));
  }
  return true;
}

// One connection from pdlb, served by its own thread.
struct connection {
  explicit connection(tcp::socket s) : socket(std::move(s)) {}
  tcp::socket socket;
  beast::flat_buffer buffer;
  std::optional<http::request_parser<http::string_body>> parser;
  std::string out;  // the bytes being written
};

// One connection's answers, written with blocking calls. The methods mirror pdlb::exchange; the
// write methods return true once the connection failed (pdlb closed it).
class responder {
 public:
  explicit responder(connection& conn) : conn_(conn) {}

  bool respond(http::status status, std::string_view body, std::string_view content_type = "application/json") {
    std::string out = head(status, content_type);
    out += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    out.append(body);
    return send(out);
  }
  bool begin_stream(http::status status, std::string_view content_type = "text/event-stream") {
    return send(head(status, content_type) + "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n");
  }
  bool write_chunk(std::string_view data) {
    if (data.empty()) return false;
    char size[20];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    std::string out = size;
    out.append(data);
    out += "\r\n";
    return send(out);
  }
  bool end_stream() { return send("0\r\n\r\n"); }
  // Closes the connection without the final chunk, or without any answer.
  void abort_stream() { keep_alive_ = false; }
  void drop_connection() { keep_alive_ = false; }

  bool keep_alive() const { return keep_alive_ && !failed_; }

 private:
  static std::string head(http::status status, std::string_view content_type) {
    std::string out = "HTTP/1.1 " + std::to_string(static_cast<unsigned>(status)) + " ";
    auto reason = http::obsolete_reason(status);
    out.append(reason.data(), reason.size());
    out += "\r\nContent-Type: ";
    out.append(content_type);
    out += "\r\n";
    return out;
  }
  bool send(std::string_view data) {
    if (failed_) return true;
    conn_.out.assign(data.data(), data.size());
    pdlb::error_code ec;
    net::write(conn_.socket, net::buffer(conn_.out), ec);
    if (conn_.out.capacity() > 64 * 1024) std::string().swap(conn_.out);
    if (ec) failed_ = true;
    return failed_;
  }

  connection& conn_;
  bool keep_alive_ = true;
  bool failed_ = false;
};

void fake_generate(responder& ex, std::string_view body, std::string_view path, role r) {
  gen_request g;
  if (!parse_gen(body, path, r, g)) {
    ex.respond(http::status::bad_request, error_json("the body must be a JSON object"));
    return;
  }
  const std::string_view sse = "text/event-stream";
  const std::string_view ct = g.stream ? sse : std::string_view("application/json");
  if (g.fault == "status") {
    ex.respond(http::status::internal_server_error, error_json("injected failure"));
  } else if (g.fault == "text") {
    ex.respond(http::status::service_unavailable, "overloaded", "text/plain");
  } else if (g.fault == "drop") {
    ex.drop_connection();
  } else if (g.fault == "garbage") {
    ex.respond(http::status::ok, "{\"text\": not json", ct);
  } else if (g.fault == "cut") {
    if (ex.begin_stream(http::status::ok, ct)) return;
    if (g.stream && ex.write_chunk(event(generate_item(g, r, 0, 1, false, g.batch)))) return;
    if (ex.write_chunk("data: {\"text\":\"half")) return;
    ex.abort_stream();
  } else if (g.fault == "empty") {
    if (g.stream) {
      if (ex.begin_stream(http::status::ok, ct)) return;
      ex.end_stream();
    } else {
      ex.respond(http::status::ok, "", ct);
    }
  } else if (g.fault == "big" || g.fault == "huge") {
    // big: 300 KB, more than a socketpair takes at once; huge: over pdlb's max_body_size (1 MiB).
    const std::size_t size = g.fault == "big" ? 300 * 1024 : 1100 * 1024;
    // The text is spliced in: dumping it would cost more than everything else the fakes do.
    auto with_text = [](json item, std::size_t n) {
      item["text"] = "";
      std::string s = dump(item);
      s.insert(s.find("\"text\":\"\"") + 8, n, 'x');
      return s;
    };
    if (g.stream) {
      if (ex.begin_stream(http::status::ok, ct)) return;
      for (std::size_t at = 0; at < size; at += 64 * 1024)
        if (ex.write_chunk("data: " + with_text(generate_item(g, r, 0, 1, false, g.batch), 64 * 1024) + "\n\n"))
          return;
      if (ex.write_chunk("data: [DONE]\n\n")) return;
      ex.end_stream();
    } else {
      ex.respond(http::status::ok, with_text(generate_item(g, r, 0, 1, true, false), size), ct);
    }
  } else if (g.stream) {
    auto events = stream_events(g, r);
    if (g.fault == "nodone") events.pop_back();
    if (ex.begin_stream(http::status::ok, sse)) return;
    for (const auto& e : events)
      if (ex.write_chunk(e)) return;
    ex.end_stream();
  } else {
    ex.respond(http::status::ok, whole_body(g, r));
  }
}

void fake_handle(responder& ex, const request& req, role r) {
  std::string_view target = req.target();
  std::string_view path = target.substr(0, target.find('?'));
  const bool get = req.method() == http::verb::get;
  const bool post = req.method() == http::verb::post;
  if (post && (path == "/generate" || path == "/v1/completions" || path == "/v1/chat/completions")) {
    fake_generate(ex, req.body(), path, r);
  } else if (get && (path == "/health" || path == "/health_generate")) {
    ex.respond(http::status::ok, "", "text/plain");
  } else if (get && path == "/get_server_info") {
    json info = {{"model_path", "fuzz-model"}, {"disaggregation_mode", r == role::prefill ? "prefill" : "decode"}};
    if (r == role::decode) info["internal_states"] = json::array({{{"last_gen_throughput", 1.5}}});
    ex.respond(http::status::ok, dump(info));
  } else if (get && path == "/get_model_info") {
    ex.respond(http::status::ok, R"({"model_path":"fuzz-model","tokenizer_path":"fuzz-model","is_generation":true})");
  } else if (get && path == "/v1/models") {
    ex.respond(http::status::ok,
               R"({"object":"list","data":[{"id":"fuzz-model","object":"model","created":0,)"
               R"("owned_by":"sglang","root":"fuzz-model","max_model_len":4096}]})");
  } else if (post && (path == "/flush_cache" || path == "/abort_request" || path == "/start_profile" ||
                      path == "/stop_profile")) {
    ex.respond(http::status::ok, "", "text/plain");
  } else {
    ex.respond(http::status::not_found, error_json("not found"));
  }
}

// Serves one connection from pdlb until either side closes it.
void serve(connection& c, role r) {
  pdlb::error_code ec;
  c.socket.set_option(tcp::no_delay(true), ec);
  for (;;) {
    c.parser.emplace();
    c.parser->body_limit(64 * 1024 * 1024);
    http::read(c.socket, c.buffer, *c.parser, ec);
    if (ec) break;
    responder ex(c);
    fake_handle(ex, c.parser->get(), r);
    if (!ex.keep_alive() || !c.parser->get().keep_alive()) break;
  }
  c.parser.reset();
  c.socket.shutdown(tcp::socket::shutdown_both, ec);
  c.socket.close(ec);
}

// One worker: an accept thread, and a thread per connection (pdlb pools its connections, so there
// are few). Lives until the process is killed.
class fake_worker {
 public:
  explicit fake_worker(role r) : acceptor_(ioc_) {
    const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(ep.protocol());
    acceptor_.set_option(net::socket_base::reuse_address(true));
    acceptor_.bind(ep);
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    std::thread([this, r] {
      for (;;) {
        tcp::socket socket(ioc_);
        pdlb::error_code ec;
        acceptor_.accept(socket, ec);
        if (ec) continue;
        auto c = std::make_shared<connection>(std::move(socket));
        std::thread([c, r] { serve(*c, r); }).detach();
      }
    }).detach();
  }
  std::uint16_t port() const { return port_; }

 private:
  net::io_context ioc_;  // never run: the sockets are used with blocking calls only
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
};

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_http_session: fake workers: %s: %s\n", what, std::strerror(errno));
  std::_Exit(1);
}

}  // namespace

fake_urls start_fake_workers() {
  int ports[2];
  if (::pipe(ports) != 0) die("pipe");
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) die("fork");
  if (child == 0) {
    // The child: dies with the fuzzer (and at once if the fuzzer is already gone).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) std::_Exit(0);
    ::close(ports[0]);
    std::signal(SIGPIPE, SIG_IGN);
    auto* prefill = new fake_worker(role::prefill);
    auto* decode = new fake_worker(role::decode);
    const std::uint16_t both[2] = {prefill->port(), decode->port()};
    if (::write(ports[1], both, sizeof both) != static_cast<ssize_t>(sizeof both)) die("write");
    ::close(ports[1]);
    for (;;) ::pause();
  }
  ::close(ports[1]);
  std::uint16_t both[2];
  std::size_t got = 0;
  while (got < sizeof both) {
    ssize_t n = ::read(ports[0], reinterpret_cast<char*>(both) + got, sizeof both - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("no ports from the child");
    got += static_cast<std::size_t>(n);
  }
  ::close(ports[0]);
  return {"http://127.0.0.1:" + std::to_string(both[0]), "http://127.0.0.1:" + std::to_string(both[1])};
}

}  // namespace pdlb_fuzz
