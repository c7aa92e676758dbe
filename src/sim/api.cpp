#include "api.hpp"

#include "model.hpp"

#include "pdlb/json_escape.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <chrono>
#include <optional>
#include <random>
#include <variant>

namespace pdlb::sim {

using json = nlohmann::json;

namespace {

constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);

enum class route { generate, completions, chat };

// ---------------------------------------------------------------------------------------------
// Small JSON helpers. Per-token output is built by appending to strings, not through a DOM.

std::string error_response(unsigned code, std::string_view type, std::string_view message) {
  // SGLang's OpenAI-style ErrorResponse, which its HTTPException handler also uses for /generate.
  std::string out = "{\"object\":\"error\",\"message\":";
  append_json_string(out, message);
  out += ",\"type\":";
  append_json_string(out, type);
  out += ",\"param\":null,\"code\":";
  out += std::to_string(code);
  out += "}";
  return out;
}

std::string_view reason_phrase(unsigned status) {
  auto r = http::obsolete_reason(static_cast<http::status>(status));
  return {r.data(), r.size()};
}

template <class Int>
void append_int(std::string& out, Int v) {
  char buf[24];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, res.ptr);
}

// Writers for the per-event path: they write at `p` (room reserved by the caller) and return the
// end, so an event is built with memcpy of known sizes, not one string append per piece.
template <std::size_t N>
char* put(char* p, const char (&lit)[N]) {
  std::memcpy(p, lit, N - 1);
  return p + N - 1;
}

char* put(char* p, std::string_view s) {
  if (!s.empty()) std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

template <class Int>
char* put_int(char* p, Int v) {
  return std::to_chars(p, p + 24, v).ptr;
}

// Seconds with 6 decimals ("0.012345"), as to_chars(fixed, 6) prints them, from integer
// microseconds: no floating-point formatting on the per-event path. At most 27 bytes.
char* put_seconds(char* p, clock::duration d) {
  auto us = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  us = us < 0 ? 0 : (us + 500) / 1000;
  p = put_int(p, us / 1000000);
  *p++ = '.';
  auto rest = us % 1000000;
  for (int i = 5; i >= 0; --i) {
    p[i] = static_cast<char>('0' + rest % 10);
    rest /= 10;
  }
  return p + 6;
}

// --stamp-events: the steady_clock time (CLOCK_MONOTONIC, comparable across processes on the
// host) at which an event was built for writing, in nanoseconds.
std::int64_t steady_ns(clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

std::string query_of(std::string_view target) {
  auto q = target.find('?');
  return q == std::string_view::npos ? std::string() : std::string(target.substr(q + 1));
}

std::string_view path_of(std::string_view target) {
  auto q = target.find('?');
  return q == std::string_view::npos ? target : target.substr(0, q);
}

std::uint64_t now_unix() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// A request that could not be parsed: status and body.
struct bad_request {
  unsigned status = 400;
  std::string body;
};

bad_request sglang_value_error(std::string_view message) {
  // SGLang's _create_error_response(ValueError): 400 with {"error": {"message": ...}}.
  return {400, json_error_body(message)};
}

// ---------------------------------------------------------------------------------------------
// Parsed generate request.

struct parsed_request {
  route kind = route::generate;
  bool batch = false;
  bool stream = false;
  bool return_logprob = false;
  std::string model;
  bool include_usage = false;
  std::optional<int> completion_logprobs;  // /v1/completions "logprobs": N
  bool chat_logprobs = false;              // /v1/chat/completions "logprobs": true
  std::vector<request_ptr> items;
};

const json* find_field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// The i-th value of a field that is a list for batches (or a scalar shared by all items).
const json* item_value(const json* v, std::size_t i, bool batch) {
  if (!v) return nullptr;
  if (batch && v->is_array()) {
    if (i >= v->size()) return nullptr;
    const json& e = (*v)[i];
    return e.is_null() ? nullptr : &e;
  }
  return v;
}

std::vector<std::int32_t> ids_from_json(const json& v) {
  std::vector<std::int32_t> ids;
  ids.reserve(v.size());
  for (auto& e : v) {
    if (!e.is_number_integer()) throw std::invalid_argument("input_ids must be integers");
    ids.push_back(static_cast<std::int32_t>(e.get<std::int64_t>()));
  }
  if (ids.empty()) ids.push_back(1);
  return ids;
}

void read_stops(const json* stop, std::vector<std::string>& out) {
  if (!stop) return;
  if (stop->is_string()) {
    out.push_back(stop->get<std::string>());
  } else if (stop->is_array()) {
    for (auto& s : *stop)
      if (s.is_string()) out.push_back(s.get<std::string>());
  }
}

std::string chat_prompt(const json& messages) {
  // Messages concatenated as "role: content\n": a stand-in for a chat template that keeps the
  // prompt length proportional to the text.
  std::string text;
  for (auto& m : messages) {
    if (!m.is_object()) continue;
    if (auto role = m.find("role"); role != m.end() && role->is_string()) {
      text += role->get<std::string>();
      text += ": ";
    }
    auto content = m.find("content");
    if (content == m.end()) continue;
    if (content->is_string()) {
      text += content->get<std::string>();
    } else if (content->is_array()) {
      for (auto& part : *content)
        if (part.is_object() && part.value("type", "") == "text" && part.contains("text") &&
            part["text"].is_string())
          text += part["text"].get<std::string>();
    }
    text += "\n";
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// Per-item output, built incrementally one token at a time.

struct item_output {
  request_ptr r;
  std::size_t index = 0;
  std::size_t sent = 0;      // tokens folded into the strings below
  bool out_logprobs = false;  // keep out_lp (a /generate request with return_logprob)
  std::string rid_json;       // the rid as a JSON string, escaped once
  std::string text;          // cumulative text
  std::string ids;           // "1,2,3"
  std::string out_lp;        // "[-0.1,5,null],..."
  std::string in_lp;         // input token logprobs, built once
  std::string_view last_piece;  // text of the last token (empty for a stop token)
  double last_logprob = 0;
  std::int32_t last_id = 0;
  bool final_sent = false;

  bool last_token_is_final() const {
    return r->ph == phase::done && sent == r->generated;
  }

  // Folds the next output token in.
  void advance() {
    std::size_t i = sent++;
    std::int32_t id = output_token(r->seed, i);
    bool is_stop_token = sent == r->generated && r->ph == phase::done && r->finished_by_stop();
    last_id = id;
    // Token texts are static words (model.hpp), so a view is enough.
    last_piece = is_stop_token ? std::string_view() : token_text(id);
    text += last_piece;
    if (!ids.empty()) ids.push_back(',');
    append_int(ids, id);
    last_logprob = output_logprob(r->seed, i);
    if (out_logprobs) {
      if (!out_lp.empty()) out_lp.push_back(',');
      out_lp.push_back('[');
      append_logprob(out_lp, last_logprob);
      out_lp.push_back(',');
      append_int(out_lp, id);
      out_lp += ",null]";
    }
  }
};

// SGLang's finish_reason object of /generate meta_info.
void append_finish_reason(std::string& out, const sim_request& r, std::size_t tokens) {
  if (r.ph != phase::done) {
    out += "null";
    return;
  }
  switch (r.result) {
    case outcome::finished:
      if (r.stop_matched_id) {
        out += "{\"type\":\"stop\",\"matched\":" + std::to_string(*r.stop_matched_id) + "}";
      } else if (!r.stop_matched.empty()) {
        out += "{\"type\":\"stop\",\"matched\":";
        append_json_string(out, r.stop_matched);
        out += "}";
      } else {
        out += "{\"type\":\"length\",\"length\":" + std::to_string(tokens) + "}";
      }
      break;
    case outcome::failed:
      out += "{\"type\":\"abort\",\"message\":";
      append_json_string(out, r.error);
      out += ",\"status_code\":" + std::to_string(r.error_status) + "}";
      break;
    default:
      out += "{\"type\":\"abort\",\"message\":";
      append_json_string(out, r.error);
      out += "}";
      break;
  }
}

std::string_view openai_finish_reason(const sim_request& r) {
  if (r.ph != phase::done) return "null";
  if (r.result == outcome::finished) return r.finished_by_stop() ? "\"stop\"" : "\"length\"";
  return "\"abort\"";
}

void append_matched_stop(std::string& out, const sim_request& r) {
  if (r.stop_matched_id) {
    out += std::to_string(*r.stop_matched_id);
  } else if (!r.stop_matched.empty()) {
    append_json_string(out, r.stop_matched);
  } else {
    out += "null";
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct api::impl {
  engine& eng;
  http_server& server;
  sim_options opts;
  fault_config faults;
  bool refused = false;
  nlohmann::json last_headers = nlohmann::json::object();  // GET /sim/last_headers
  std::mt19937_64 rng{std::random_device{}()};

  impl(engine& e, http_server& s, const sim_options& o) : eng(e), server(s), opts(o) {
    faults = o.faults;
  }

  std::string new_rid() { return fmt::format("{:016x}{:016x}", rng(), rng()); }

  void apply_refuse() {
    if (faults.refuse_connections && !refused) {
      refused = true;
      server.stop_accepting();
      spdlog::warn("fault: refusing connections");
    } else if (!faults.refuse_connections && refused) {
      refused = false;
      server.resume_accepting();
      spdlog::info("fault: accepting connections again");
    }
  }

  // The fault for the next generate request; consumes one unit of `count`.
  fault_config take_fault() {
    if (!faults.any_request_fault()) return {};
    fault_config f = faults;
    if (faults.count) {
      if (*faults.count <= 1) {
        fault_config cleared;
        cleared.refuse_connections = faults.refuse_connections;
        faults = cleared;
      } else {
        --*faults.count;
      }
    }
    return f;
  }

  std::variant<parsed_request, bad_request> parse(route kind, const std::string& body_text);
  // What a body asks for: its prompts, and where its sampling parameters are (one object, or one
  // per item of a batch).
  struct prompt_set {
    std::vector<std::vector<std::int32_t>> prompts;
    const json* sampling = nullptr;
  };
  std::optional<bad_request> read_generate_prompts(const json& body, parsed_request& p, prompt_set& out);
  std::optional<bad_request> read_openai_prompts(const json& body, parsed_request& p, prompt_set& out);
  std::optional<bad_request> read_sampling(route kind, const json* sp, sim_request& r);
  std::optional<bad_request> read_bootstrap(const json* room, const json* host, const json* port, sim_request& r);

  net::awaitable<void> handle(exchange& ex);
  net::awaitable<void> handle_generate(exchange& ex, route kind);
  net::awaitable<void> run_stream(exchange& ex, parsed_request& p, std::vector<item_output>& outs,
                                  wake_signal& sig, std::optional<std::uint32_t> die_after);
  net::awaitable<void> run_whole(exchange& ex, parsed_request& p, std::vector<item_output>& outs,
                                 wake_signal& sig);
  net::awaitable<void> handle_wait(exchange& ex);
  net::awaitable<void> handle_fault(exchange& ex);

  // Output formats, appended to `out`. `stamp`: the write time of a streamed event
  // (--stamp-events), added as sim_write_ns.
  void append_generate_event(std::string& out, const parsed_request& p, item_output& o,
                             bool final_event, clock::time_point now,
                             std::optional<std::int64_t> stamp = std::nullopt);
  void append_completion_chunk(std::string& out, const parsed_request& p, item_output& o,
                               bool final_event, std::optional<std::int64_t> stamp);
  void append_chat_chunk(std::string& out, const parsed_request& p, item_output& o,
                         std::string_view delta, bool with_logprob, bool final_event,
                         std::optional<std::int64_t> stamp);
  std::string usage_json(const parsed_request& p, const std::vector<item_output>& outs);
  std::string whole_body(const parsed_request& p, std::vector<item_output>& outs);
  std::string server_info();
};

api::api(engine& eng, http_server& server, const sim_options& opts)
    : impl_(std::make_unique<impl>(eng, server, opts)) {
  impl_->apply_refuse();
}

api::~api() = default;

net::awaitable<void> api::handle(exchange& ex) { return impl_->handle(ex); }

std::variant<parsed_request, bad_request> api::impl::parse(route kind,
                                                          const std::string& body_text) {
  parsed_request p;
  p.kind = kind;
  json body;
  try {
    body = json::parse(body_text);
  } catch (const std::exception& e) {
    return bad_request{400, error_response(400, "Bad Request",
                                           std::string("invalid JSON body: ") + e.what())};
  }
  if (!body.is_object())
    return bad_request{400, error_response(400, "Bad Request", "the body must be a JSON object")};

  try {
    p.stream = body.value("stream", false);
    prompt_set asked;
    if (auto bad = kind == route::generate ? read_generate_prompts(body, p, asked) : read_openai_prompts(body, p, asked))
      return *bad;
    const json* rid = find_field(body, "rid");
    const json* host = find_field(body, "bootstrap_host");
    const json* port = find_field(body, "bootstrap_port");
    const json* room = find_field(body, "bootstrap_room");
    for (std::size_t i = 0; i < asked.prompts.size(); ++i) {
      auto r = std::make_shared<sim_request>();
      r->input_ids = std::move(asked.prompts[i]);
      r->seed = prompt_seed(r->input_ids);
      if (auto bad = read_sampling(kind, item_value(asked.sampling, i, p.batch), *r)) return *bad;
      const json* rid_i = item_value(rid, i, p.batch);
      r->rid = rid_i && rid_i->is_string() ? rid_i->get<std::string>() : new_rid();
      if (p.batch && rid_i && rid_i->is_string() && !(rid && rid->is_array()))
        r->rid += "-" + std::to_string(i);
      if (auto bad = read_bootstrap(item_value(room, i, p.batch), item_value(host, i, p.batch),
                                    item_value(port, i, p.batch), *r))
        return *bad;
      p.items.push_back(std::move(r));
    }
  } catch (const std::exception& e) {
    return bad_request{400, error_response(400, "Bad Request", e.what())};
  }
  return p;
}

// /generate: text (one or a batch) or input_ids (one or a batch); sampling_params beside them.
std::optional<bad_request> api::impl::read_generate_prompts(const json& body, parsed_request& p, prompt_set& out) {
  p.return_logprob = body.value("return_logprob", false);
  const json* text = find_field(body, "text");
  const json* ids = find_field(body, "input_ids");
  if (text && text->is_string()) {
    out.prompts.push_back(tokenize(text->get_ref<const std::string&>(), opts.chars_per_token));
  } else if (text && text->is_array()) {
    p.batch = true;
    for (auto& t : *text) {
      if (!t.is_string()) return sglang_value_error("text must be a string or a list of strings");
      out.prompts.push_back(tokenize(t.get_ref<const std::string&>(), opts.chars_per_token));
    }
  } else if (ids && ids->is_array() && !ids->empty() && ids->front().is_array()) {
    p.batch = true;
    for (auto& one : *ids) out.prompts.push_back(ids_from_json(one));
  } else if (ids && ids->is_array()) {
    out.prompts.push_back(ids_from_json(*ids));
  } else {
    return sglang_value_error("Either text, input_ids or input_embeds should be provided.");
  }
  out.sampling = find_field(body, "sampling_params");
  return std::nullopt;
}

// /v1/completions (one prompt: text or token ids) and /v1/chat/completions (messages); OpenAI puts
// max_tokens and stop at the top level.
std::optional<bad_request> api::impl::read_openai_prompts(const json& body, parsed_request& p, prompt_set& out) {
  p.model = body.value("model", opts.model_path);
  if (auto so = find_field(body, "stream_options"); so && so->is_object())
    p.include_usage = so->value("include_usage", false);
  if (p.kind == route::completions) {
    const json* prompt = find_field(body, "prompt");
    if (prompt && prompt->is_string()) {
      out.prompts.push_back(tokenize(prompt->get_ref<const std::string&>(), opts.chars_per_token));
    } else if (prompt && prompt->is_array() && !prompt->empty() && prompt->front().is_number_integer()) {
      out.prompts.push_back(ids_from_json(*prompt));
    } else if (prompt && prompt->is_array() && prompt->size() == 1 && prompt->front().is_string()) {
      out.prompts.push_back(tokenize(prompt->front().get_ref<const std::string&>(), opts.chars_per_token));
    } else {
      return bad_request{400, error_response(400, "Bad Request",
                                             "prompt must be a string or a list of token ids "
                                             "(the simulator takes one prompt per request)")};
    }
    if (auto lp = find_field(body, "logprobs"); lp && lp->is_number_integer())
      p.completion_logprobs = lp->get<int>();
  } else {
    const json* messages = find_field(body, "messages");
    if (!messages || !messages->is_array() || messages->empty())
      return bad_request{400, error_response(400, "Bad Request", "Messages cannot be empty.")};
    out.prompts.push_back(tokenize(chat_prompt(*messages), opts.chars_per_token));
    p.chat_logprobs = body.value("logprobs", false);
  }
  p.return_logprob = p.completion_logprobs.has_value() || p.chat_logprobs;
  out.sampling = &body;
  return std::nullopt;
}

// One item's sampling parameters (`sp`, null for none): its token budget and stops.
std::optional<bad_request> api::impl::read_sampling(route kind, const json* sp, sim_request& r) {
  r.max_new_tokens = opts.default_max_new_tokens;
  if (!sp || !sp->is_object()) return std::nullopt;
  const char* key = kind == route::generate ? "max_new_tokens" : "max_tokens";
  const json* mx = find_field(*sp, key);
  if (!mx && kind == route::chat) mx = find_field(*sp, "max_completion_tokens");
  if (mx) {
    if (!mx->is_number_integer() || mx->get<std::int64_t>() < 0)
      return sglang_value_error(fmt::format("{} must be a non-negative integer", key));
    r.max_new_tokens = static_cast<std::uint32_t>(std::min<std::int64_t>(mx->get<std::int64_t>(), opts.context_length));
  }
  read_stops(find_field(*sp, "stop"), r.stop_strings);
  if (auto st = find_field(*sp, "stop_token_ids"); st && st->is_array())
    for (auto& t : *st)
      if (t.is_number_integer()) r.stop_token_ids.push_back(t.get<std::int32_t>());
  return std::nullopt;
}

// One item's bootstrap fields, as a PD worker requires them: room and host always, port if given.
std::optional<bad_request> api::impl::read_bootstrap(const json* room, const json* host, const json* port,
                                                     sim_request& r) {
  constexpr std::string_view routed =
      " is required: a PD disaggregation worker only serves requests routed with bootstrap_host, "
      "bootstrap_port and bootstrap_room";
  if (!room) return sglang_value_error("bootstrap_room" + std::string(routed));
  if (!host || !host->is_string()) return sglang_value_error("bootstrap_host" + std::string(routed));
  if (room->is_number_unsigned()) {
    r.bootstrap_room = room->get<std::uint64_t>();
  } else if (room->is_number_integer() && room->get<std::int64_t>() >= 0) {
    r.bootstrap_room = static_cast<std::uint64_t>(room->get<std::int64_t>());
  } else {
    return sglang_value_error("bootstrap_room must be a non-negative integer");
  }
  r.bootstrap_host = host->get<std::string>();
  if (port) {
    if (!port->is_number_integer() || port->get<std::int64_t>() <= 0 || port->get<std::int64_t>() > 65535)
      return sglang_value_error("bootstrap_port must be a port number");
    r.bootstrap_port = static_cast<std::uint16_t>(port->get<std::int64_t>());
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Output formats.

void api::impl::append_generate_event(std::string& out, const parsed_request& p, item_output& o,
                                      bool final_event, clock::time_point now,
                                      std::optional<std::int64_t> stamp) {
  const sim_request& r = *o.r;
  std::string finish;  // only a final event has one
  if (final_event) append_finish_reason(finish, r, o.sent);
  // Fixed text (about 220 bytes at most), five numbers (at most 27 bytes each) and the variable
  // parts.
  const std::size_t bound = 256 + 5 * 27 + o.text.size() + o.ids.size() + o.rid_json.size() +
                            finish.size() +
                            (p.return_logprob ? o.out_lp.size() + o.in_lp.size() : 0);
  const std::size_t start = out.size();
  out.resize(start + bound);
  char* w = out.data() + start;
  // Token texts are plain ASCII words (model.hpp), so the cumulative text needs no escaping scan.
  w = put(w, "{\"text\":\"");
  w = put(w, o.text);
  w = put(w, "\",\"output_ids\":[");
  w = put(w, o.ids);
  w = put(w, "],\"meta_info\":{\"id\":");
  w = put(w, o.rid_json);
  w = put(w, ",\"finish_reason\":");
  w = final_event ? put(w, finish) : put(w, "null");
  w = put(w, ",\"prompt_tokens\":");
  w = put_int(w, r.input_len());
  w = put(w, ",\"completion_tokens\":");
  w = put_int(w, o.sent);
  w = put(w, ",\"cached_tokens\":0,\"e2e_latency\":");
  w = put_seconds(w, now - r.created);
  if (stamp) {
    w = put(w, ",\"sim_write_ns\":");
    w = put_int(w, *stamp);
  }
  if (p.return_logprob) {
    w = put(w, ",\"input_token_logprobs\":[");
    w = put(w, o.in_lp);
    w = put(w, "],\"output_token_logprobs\":[");
    w = put(w, o.out_lp);
    w = put(w, "]");
  }
  w = put(w, "}");
  if (p.batch) {
    w = put(w, ",\"index\":");
    w = put_int(w, o.index);
  }
  w = put(w, "}");
  out.resize(static_cast<std::size_t>(w - out.data()));
}

// The end of an OpenAI stream chunk's choice: finish_reason, matched_stop, no usage, and the
// write time with --stamp-events.
static void append_chunk_end(std::string& out, const sim_request& r, bool final_event,
                             std::optional<std::int64_t> stamp) {
  out += ",\"finish_reason\":";
  out += final_event ? openai_finish_reason(r) : "null";
  out += ",\"matched_stop\":";
  if (final_event) {
    append_matched_stop(out, r);
  } else {
    out += "null";
  }
  out += "}],\"usage\":null";
  if (stamp) {
    out += ",\"sim_write_ns\":";
    append_int(out, *stamp);
  }
  out += "}";
}

void api::impl::append_completion_chunk(std::string& out, const parsed_request& p, item_output& o,
                                        bool final_event, std::optional<std::int64_t> stamp) {
  const sim_request& r = *o.r;
  out += "{\"id\":";
  out += o.rid_json;
  out += ",\"object\":\"text_completion\",\"created\":";
  append_int(out, now_unix());
  out += ",\"model\":";
  append_json_string(out, p.model);
  out += ",\"choices\":[{\"index\":0,\"text\":";
  append_json_string(out, o.last_piece);
  out += ",\"logprobs\":";
  if (p.completion_logprobs) {
    out += "{\"text_offset\":[";
    append_int(out, o.text.size() - o.last_piece.size());
    out += "],\"token_logprobs\":[";
    append_logprob(out, o.last_logprob);
    out += "],\"tokens\":[";
    append_json_string(out, token_text(o.last_id));
    out += "],\"top_logprobs\":[{}]}";
  } else {
    out += "null";
  }
  append_chunk_end(out, r, final_event, stamp);
}

void api::impl::append_chat_chunk(std::string& out, const parsed_request& p, item_output& o,
                                  std::string_view delta, bool with_logprob, bool final_event,
                                  std::optional<std::int64_t> stamp) {
  const sim_request& r = *o.r;
  out += "{\"id\":";
  out += o.rid_json;
  out += ",\"object\":\"chat.completion.chunk\",\"created\":";
  append_int(out, now_unix());
  out += ",\"model\":";
  append_json_string(out, p.model);
  out += ",\"choices\":[{\"index\":0,\"delta\":";
  out += delta;
  out += ",\"logprobs\":";
  if (with_logprob && p.chat_logprobs) {
    out += "{\"content\":[{\"token\":";
    auto tok = token_text(o.last_id);
    append_json_string(out, tok);
    out += ",\"bytes\":[";
    for (std::size_t i = 0; i < tok.size(); ++i) {
      if (i) out += ",";
      append_int(out, static_cast<unsigned>(static_cast<unsigned char>(tok[i])));
    }
    out += "],\"logprob\":";
    append_logprob(out, o.last_logprob);
    out += ",\"top_logprobs\":[]}]}";
  } else {
    out += "null";
  }
  append_chunk_end(out, r, final_event, stamp);
}

std::string api::impl::usage_json(const parsed_request&, const std::vector<item_output>& outs) {
  std::uint64_t prompt = 0, completion = 0;
  for (auto& o : outs) {
    prompt += o.r->input_len();
    completion += o.sent;
  }
  return fmt::format(
      "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{},"
      "\"prompt_tokens_details\":null}}",
      prompt, prompt + completion, completion);
}

std::string api::impl::whole_body(const parsed_request& p, std::vector<item_output>& outs) {
  if (p.kind == route::generate) {
    const auto now = clock::now();
    std::string out;
    if (!p.batch) {
      append_generate_event(out, p, outs[0], true, now);
      return out;
    }
    out = "[";
    parsed_request single = p;
    single.batch = false;  // batch results are a list, without "index"
    for (std::size_t i = 0; i < outs.size(); ++i) {
      if (i) out += ",";
      append_generate_event(out, single, outs[i], true, now);
    }
    out += "]";
    return out;
  }
  item_output& o = outs[0];
  const sim_request& r = *o.r;
  std::string out = "{\"id\":";
  append_json_string(out, r.rid);
  if (p.kind == route::completions) {
    out += ",\"object\":\"text_completion\",\"created\":" + std::to_string(now_unix()) +
           ",\"model\":";
    append_json_string(out, p.model);
    out += ",\"choices\":[{\"index\":0,\"text\":";
    append_json_string(out, o.text);
    out += ",\"logprobs\":";
    if (p.completion_logprobs) {
      std::string offsets, lps, toks, tops;
      std::size_t offset = 0;
      for (std::size_t i = 0; i < o.sent; ++i) {
        auto id = output_token(r.seed, i);
        auto piece = token_text(id);
        if (i) {
          offsets += ",";
          lps += ",";
          toks += ",";
          tops += ",";
        }
        offsets += std::to_string(offset);
        offset += piece.size();
        append_logprob(lps, output_logprob(r.seed, i));
        append_json_string(toks, piece);
        tops += "{}";
      }
      out += "{\"text_offset\":[" + offsets + "],\"token_logprobs\":[" + lps + "],\"tokens\":[" +
             toks + "],\"top_logprobs\":[" + tops + "]}";
    } else {
      out += "null";
    }
  } else {
    out += ",\"object\":\"chat.completion\",\"created\":" + std::to_string(now_unix()) +
           ",\"model\":";
    append_json_string(out, p.model);
    out += ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":";
    append_json_string(out, o.text);
    out += ",\"reasoning_content\":null,\"tool_calls\":null},\"logprobs\":";
    if (p.chat_logprobs) {
      out += "{\"content\":[";
      for (std::size_t i = 0; i < o.sent; ++i) {
        auto tok = token_text(output_token(r.seed, i));
        if (i) out += ",";
        out += "{\"token\":";
        append_json_string(out, tok);
        out += ",\"bytes\":[";
        for (std::size_t b = 0; b < tok.size(); ++b) {
          if (b) out += ",";
          out += std::to_string(static_cast<unsigned char>(tok[b]));
        }
        out += "],\"logprob\":";
        append_logprob(out, output_logprob(r.seed, i));
        out += ",\"top_logprobs\":[]}";
      }
      out += "]}";
    } else {
      out += "null";
    }
  }
  out += ",\"finish_reason\":";
  out += openai_finish_reason(r);
  out += ",\"matched_stop\":";
  append_matched_stop(out, r);
  out += "}],\"usage\":" + usage_json(p, outs) + "}";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Request handling.

namespace {

// Aborts the requests of a handler that ends early (client gone, write failed, injected death).
// It lives in the handler's frame, so it also runs when the frame is destroyed by cancellation.
struct items_guard {
  engine& eng;
  std::vector<item_output>& outs;
  ~items_guard() {
    for (auto& o : outs) {
      o.r->wake = nullptr;  // the signal dies with the frame
      if (o.r->ph != phase::done) eng.abort(*o.r, "client disconnected");
    }
  }
};

net::awaitable<void> throw_if_cancelled() {
  auto cs = co_await net::this_coro::cancellation_state;
  if (cs.cancelled() != net::cancellation_type::none)
    throw boost::system::system_error(net::error::operation_aborted);
}

}  // namespace

net::awaitable<void> api::impl::handle_generate(exchange& ex, route kind) {
  last_headers = nlohmann::json::object();
  for (const char* name : {"x-request-id", "traceparent", "tracestate"})
    if (auto v = ex.req()[name]; !v.empty()) last_headers[name] = std::string(v);
  fault_config fault = take_fault();
  if (fault.any_request_fault()) eng.count_fault();
  if (fault.latency_ms > 0) {
    net::steady_timer t(co_await net::this_coro::executor,
                        std::chrono::milliseconds(fault.latency_ms));
    co_await t.async_wait(tuple_awaitable);
    co_await throw_if_cancelled();
  }
  if (fault.stall) {
    // Never answers; the handler ends when the client closes (cancellation).
    wake_signal never(co_await net::this_coro::executor);
    co_await wait_for(never);
    co_return;
  }
  if (fault.drop_connection) {
    ex.drop_connection();
    co_return;
  }
  if (fault.fail_status != 0) {
    auto status = fault.fail_status;
    co_await ex.respond(static_cast<http::status>(status),
                        error_response(status, reason_phrase(status),
                                       fmt::format("injected fault: status {}", status)));
    co_return;
  }

  auto parsed = parse(kind, ex.req().body());
  if (auto* bad = std::get_if<bad_request>(&parsed)) {
    eng.count_rejected();
    co_await ex.respond(static_cast<http::status>(bad->status), bad->body);
    co_return;
  }
  auto& p = std::get<parsed_request>(parsed);

  wake_signal sig(co_await net::this_coro::executor);
  std::vector<item_output> outs(p.items.size());
  items_guard guard{eng, outs};
  for (std::size_t i = 0; i < p.items.size(); ++i) {
    outs[i].r = p.items[i];
    outs[i].index = i;
    outs[i].r->wake = &sig;
    append_json_string(outs[i].rid_json, outs[i].r->rid);
    outs[i].out_logprobs = p.return_logprob && p.kind == route::generate;
    if (p.return_logprob && p.kind == route::generate &&
        opts.role == worker_role::prefill) {
      // SGLang reports no logprob for the first input token; the decode worker returns none
      // (its input is the prefill's), so a load balancer merges the prefill's list in front.
      auto& ids = outs[i].r->input_ids;
      std::string& lp = outs[i].in_lp;
      lp.reserve(ids.size() * 24);
      for (std::size_t k = 0; k < ids.size(); ++k) {
        if (k) lp += ",";
        lp += "[";
        if (k == 0) {
          lp += "null";
        } else {
          append_logprob(lp, input_logprob(ids[k], k));
        }
        lp += "," + std::to_string(ids[k]) + ",null]";
      }
    }
  }
  for (auto& r : p.items) eng.submit(r);

  if (p.stream) {
    co_await run_stream(ex, p, outs, sig,
                        fault.die_after_tokens ? fault.die_after_tokens : std::nullopt);
  } else {
    co_await run_whole(ex, p, outs, sig);
  }
}

net::awaitable<void> api::impl::run_whole(exchange& ex, parsed_request& p,
                                          std::vector<item_output>& outs, wake_signal& sig) {
  for (;;) {
    bool all_done = true;
    for (auto& o : outs) all_done = all_done && o.r->ph == phase::done;
    if (all_done) break;
    co_await wait_for(sig);
  }
  for (auto& o : outs) {
    if (o.r->result == outcome::failed) {
      // SGLang raises HTTPException(500) for a request the scheduler aborted (KV transfer
      // failure); its handler answers with an ErrorResponse.
      co_await ex.respond(static_cast<http::status>(o.r->error_status),
                          error_response(o.r->error_status, reason_phrase(o.r->error_status),
                                         o.r->error));
      co_return;
    }
  }
  for (auto& o : outs)
    while (o.sent < o.r->generated) o.advance();
  co_await ex.respond(http::status::ok, whole_body(p, outs));
}

net::awaitable<void> api::impl::run_stream(exchange& ex, parsed_request& p,
                                           std::vector<item_output>& outs, wake_signal& sig,
                                           std::optional<std::uint32_t> die_after) {
  if (auto ec = co_await ex.begin_stream(http::status::ok, "text/event-stream")) co_return;
  std::uint64_t token_events = 0;
  bool chat_started = false;
  std::string buf;
  std::string delta;
  for (;;) {
    buf.clear();
    bool all_final = true;
    bool die_now = false;
    // One clock reading per write: the events built now are written right after.
    const auto now = clock::now();
    const auto stamp =
        opts.stamp_events ? std::optional<std::int64_t>(steady_ns(now)) : std::nullopt;
    if (p.kind == route::chat && !chat_started) {
      // The first chat chunk carries the role, as SGLang's does.
      chat_started = true;
      buf.append("data: ", 6);
      append_chat_chunk(buf, p, outs[0], "{\"role\":\"assistant\",\"content\":\"\"}", false, false,
                        stamp);
      buf.append("\n\n", 2);
    }
    for (auto& o : outs) {
      while (o.sent < o.r->generated && !die_now) {
        o.advance();
        bool final_event = o.last_token_is_final();
        buf.append("data: ", 6);
        switch (p.kind) {
          case route::generate:
            append_generate_event(buf, p, o, final_event, now, stamp);
            break;
          case route::completions:
            append_completion_chunk(buf, p, o, final_event, stamp);
            break;
          case route::chat: {
            delta = "{\"content\":";
            append_json_string(delta, o.last_piece);
            delta += "}";
            append_chat_chunk(buf, p, o, delta, true, false, stamp);
            break;
          }
        }
        buf.append("\n\n", 2);
        if (final_event) o.final_sent = p.kind != route::chat;
        if (die_after && ++token_events >= *die_after) die_now = true;
      }
      if (!o.final_sent && o.r->ph == phase::done && o.sent == o.r->generated && !die_now) {
        // A request that ended without a token to carry its finish reason: failure, abort, a
        // chat's closing chunk, or zero tokens.
        buf.append("data: ", 6);
        if (o.r->result == outcome::failed && p.kind != route::generate) {
          buf += error_response(o.r->error_status, reason_phrase(o.r->error_status), o.r->error);
        } else if (p.kind == route::generate) {
          append_generate_event(buf, p, o, true, now, stamp);
        } else if (p.kind == route::completions) {
          o.last_piece = {};
          append_completion_chunk(buf, p, o, true, stamp);
        } else {
          append_chat_chunk(buf, p, o, "{}", false, true, stamp);
        }
        buf.append("\n\n", 2);
        o.final_sent = true;
      }
      all_final = all_final && o.final_sent;
    }
    if (all_final && !die_now) {
      if (p.kind != route::generate && p.include_usage) {
        buf += "data: {\"id\":";
        append_json_string(buf, outs[0].r->rid);
        buf += p.kind == route::chat ? ",\"object\":\"chat.completion.chunk\""
                                     : ",\"object\":\"text_completion\"";
        buf += ",\"created\":" + std::to_string(now_unix()) + ",\"model\":";
        append_json_string(buf, p.model);
        buf += ",\"choices\":[],\"usage\":" + usage_json(p, outs) + "}\n\n";
      }
      buf += "data: [DONE]\n\n";
    }
    if (!buf.empty()) {
      if (auto ec = co_await ex.write_chunk(buf)) co_return;  // client gone; the guard aborts
    }
    if (die_now) {
      spdlog::warn("fault: stream cut after {} token events", token_events);
      ex.abort_stream();
      co_return;
    }
    if (all_final) {
      co_await ex.end_stream();
      co_return;
    }
    co_await wait_for(sig);
  }
}

net::awaitable<void> api::impl::handle_wait(exchange& ex) {
  std::vector<stat_condition> conds;
  std::chrono::milliseconds timeout(10000);
  auto known = eng.stats_json();
  std::string q = query_of(ex.req().target());
  std::size_t pos = 0;
  while (pos <= q.size() && !q.empty()) {
    auto amp = q.find('&', pos);
    std::string part = q.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    pos = amp == std::string::npos ? q.size() + 1 : amp + 1;
    if (part.empty()) continue;
    auto eq = part.find('=');
    std::string key = part.substr(0, eq);
    std::string val = eq == std::string::npos ? "" : part.substr(eq + 1);
    double v = 0;
    try {
      std::size_t used = 0;
      v = std::stod(val, &used);
      if (used != val.size()) throw std::invalid_argument("trailing characters");
    } catch (const std::exception&) {
      v = std::numeric_limits<double>::quiet_NaN();
    }
    if (std::isnan(v)) {
      co_await ex.respond(http::status::bad_request,
                          json_error_body("bad number in /sim/wait: " + part));
      co_return;
    }
    if (key == "timeout_ms") {
      timeout = std::chrono::milliseconds(static_cast<std::int64_t>(v));
      continue;
    }
    stat_condition c;
    c.value = v;
    if (key.rfind("min_", 0) == 0) {
      c.kind = stat_condition::min;
      c.field = key.substr(4);
    } else if (key.rfind("max_", 0) == 0) {
      c.kind = stat_condition::max;
      c.field = key.substr(4);
    } else {
      c.field = key;
    }
    if (!known.contains(c.field) || !known[c.field].is_number()) {
      co_await ex.respond(http::status::bad_request,
                          json_error_body("unknown counter in /sim/wait: " + c.field));
      co_return;
    }
    conds.push_back(std::move(c));
  }
  timeout = std::clamp(timeout, std::chrono::milliseconds(0), std::chrono::milliseconds(600000));

  wake_signal sig(co_await net::this_coro::executor);
  sig.timed = true;
  sig.timer.expires_after(timeout);
  stat_waiter w{conds, &sig};
  eng.add_waiter(&w);
  struct unregister {
    engine& eng;
    stat_waiter* w;
    ~unregister() { eng.remove_waiter(w); }
  } guard{eng, &w};
  for (;;) {
    if (eng.conditions_hold(conds)) {
      co_await ex.respond(http::status::ok, eng.stats_json().dump());
      co_return;
    }
    sig.pending = false;
    co_await sig.timer.async_wait(tuple_awaitable);
    co_await throw_if_cancelled();
    if (!sig.pending && !eng.conditions_hold(conds)) {
      co_await ex.respond(http::status::request_timeout, eng.stats_json().dump());
      co_return;
    }
  }
}

net::awaitable<void> api::impl::handle_fault(exchange& ex) {
  fault_config f;
  std::string error;
  try {
    json body = ex.req().body().empty() ? json::object() : json::parse(ex.req().body());
    if (!body.is_object()) throw std::invalid_argument("the body must be a JSON object");
    for (auto& [key, v] : body.items()) {
      if (v.is_null()) continue;
      if (key == "fail_status") {
        f.fail_status = v.get<unsigned>();
        if (f.fail_status != 0 && (f.fail_status < 100 || f.fail_status > 999))
          throw std::invalid_argument("fail_status must be an HTTP status");
      } else if (key == "drop_connection") {
        f.drop_connection = v.get<bool>();
      } else if (key == "stall") {
        f.stall = v.get<bool>();
      } else if (key == "latency_ms") {
        f.latency_ms = v.get<std::uint32_t>();
      } else if (key == "die_after_tokens") {
        f.die_after_tokens = v.get<std::uint32_t>();
      } else if (key == "refuse_connections") {
        f.refuse_connections = v.get<bool>();
      } else if (key == "count") {
        f.count = v.get<std::uint64_t>();
      } else {
        throw std::invalid_argument("unknown fault: " + key);
      }
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (!error.empty()) {
    co_await ex.respond(http::status::bad_request, json_error_body(error));
    co_return;
  }
  faults = f;
  spdlog::info("fault set: {}", ex.req().body().empty() ? "{}" : ex.req().body());
  // The listener changes before the answer, so a client that got the answer sees the new state;
  // this answer goes over a connection that is already accepted.
  apply_refuse();
  co_await ex.respond(http::status::ok, "{\"success\":true}");
}

std::string api::impl::server_info() {
  json j;
  j["model_path"] = opts.model_path;
  j["tokenizer_path"] = opts.model_path;
  j["served_model_name"] = opts.model_path;
  j["host"] = opts.host;
  j["port"] = server.port();
  j["disaggregation_mode"] = opts.role == worker_role::prefill ? "prefill" : "decode";
  j["disaggregation_bootstrap_port"] = eng.bootstrap_port();
  j["max_running_requests"] = opts.max_running_requests;
  j["max_total_num_tokens"] = opts.max_total_tokens;
  j["max_prefill_tokens"] = opts.max_prefill_tokens;
  j["context_length"] = opts.context_length;
  j["decode_log_interval"] = opts.decode_log_interval;
  j["internal_states"] = json::array(
      {{{"last_gen_throughput", eng.last_gen_throughput()}, {"avg_spec_accept_length", nullptr}}});
  j["version"] = std::string("pdlb-sim ") + PDLB_VERSION;
  j["sim_stats"] = eng.stats_json();
  return j.dump();
}

net::awaitable<void> api::impl::handle(exchange& ex) {
  auto path = path_of(ex.req().target());
  if (path == "/generate") {
    co_await handle_generate(ex, route::generate);
  } else if (path == "/v1/completions") {
    co_await handle_generate(ex, route::completions);
  } else if (path == "/v1/chat/completions") {
    co_await handle_generate(ex, route::chat);
  } else if (path == "/health" || path == "/health_generate") {
    co_await ex.respond(http::status::ok, "", "text/plain");
  } else if (path == "/sim/last_headers") {
    co_await ex.respond(http::status::ok, last_headers.dump());
  } else if (path == "/sim/stats") {
    co_await ex.respond(http::status::ok, eng.stats_json().dump());
  } else if (path == "/sim/wait") {
    co_await handle_wait(ex);
  } else if (path == "/sim/fault") {
    co_await handle_fault(ex);
  } else if (path == "/get_server_info" || path == "/server_info") {
    co_await ex.respond(http::status::ok, server_info());
  } else if (path == "/get_load") {
    co_await ex.respond(http::status::ok, eng.load_json().dump());
  } else if (path == "/get_model_info" || path == "/model_info") {
    json j{{"model_path", opts.model_path},
           {"tokenizer_path", opts.model_path},
           {"is_generation", true},
           {"preferred_sampling_params", nullptr},
           {"weight_version", "default"},
           {"has_image_understanding", false},
           {"has_audio_understanding", false}};
    co_await ex.respond(http::status::ok, j.dump());
  } else if (path == "/v1/models") {
    json card{{"id", opts.model_path},         {"object", "model"},
              {"created", now_unix()},         {"owned_by", "sglang"},
              {"root", opts.model_path},       {"parent", nullptr},
              {"max_model_len", opts.context_length}};
    json j{{"object", "list"}, {"data", json::array({card})}};
    co_await ex.respond(http::status::ok, j.dump());
  } else if (path == "/slow_down") {
    double s = 0;
    std::string error;
    try {
      if (!ex.req().body().empty()) {
        json body = json::parse(ex.req().body());
        if (auto it = body.find("forward_sleep_time"); it != body.end() && it->is_number())
          s = it->get<double>();
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!error.empty()) {
      co_await ex.respond(http::status::bad_request, json_error_body(error));
      co_return;
    }
    eng.set_slow_down(s);
    co_await ex.respond(http::status::ok, "null");  // SGLang's handler returns None
  } else if (path == "/abort_request") {
    std::string rid;
    bool all = false;
    std::string error;
    try {
      json body = ex.req().body().empty() ? json::object() : json::parse(ex.req().body());
      rid = body.value("rid", "");
      all = body.value("abort_all", false);
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!error.empty()) {
      co_await ex.respond(http::status::bad_request, json_error_body(error));
      co_return;
    }
    auto n = (all || !rid.empty()) ? eng.abort_by_rid(rid, all) : 0;
    spdlog::info("abort_request: rid='{}' abort_all={} aborted {}", rid, all, n);
    co_await ex.respond(http::status::ok, "", "text/plain");
  } else if (path == "/flush_cache") {
    co_await ex.respond(http::status::ok,
                        "Cache flushed.\nPlease check backend logs for more details. (When there "
                        "are running or waiting requests, the operation will not be performed.)\n",
                        "text/plain");
  } else if (path == "/start_profile") {
    co_await ex.respond(http::status::ok, "Start profiling.\n", "text/plain");
  } else if (path == "/stop_profile") {
    co_await ex.respond(http::status::ok, "Stop profiling. This will take some time.\n",
                        "text/plain");
  } else {
    co_await ex.respond(http::status::not_found, "{\"detail\":\"Not Found\"}");
  }
}

}  // namespace pdlb::sim
