#include "runner.hpp"

#include "pdlb/config.hpp"
#include "pdlb/http_client.hpp"
#include "pdlb/json_escape.hpp"
#include "pdlb/sse.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/error.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>

namespace pdlb::bench {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;
using error_code = boost::system::error_code;

namespace {

constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);
// Response headers larger than this are an error; workers and proxies send a few hundred bytes.
constexpr std::uint32_t header_limit = 64 * 1024;
// Non-stream bodies are kept whole for validation; anything larger is a broken server.
constexpr std::size_t whole_body_limit = 256ull * 1024 * 1024;
// How many distinct failures are printed to stderr as they happen (all are counted).
constexpr int error_samples = 5;

double ms_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// splitmix64: a fixed, fast generator, so every run sends the same prompt.
std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string prompt_text(std::size_t chars) {
  static constexpr std::string_view pangram = "The quick brown fox jumps over the lazy dog. ";
  if (chars == 0) return "Hello, my name is";
  std::string s;
  s.reserve(chars);
  while (s.size() < chars) s.append(pangram.substr(0, std::min(pangram.size(), chars - s.size())));
  return s;
}

// Token ids spread over a 152k vocabulary (Qwen's), so an 8k-token prompt is ~51 KB of JSON.
std::string id_list(std::uint32_t n) {
  std::string s = "[";
  std::uint64_t seed = 42;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (i) s += ',';
    s += std::to_string(splitmix(seed) % 151936);
  }
  s += ']';
  return s;
}

// One server the bench talks to, resolved once.
struct target {
  worker_url url;  // the library's URL parser, as for pdlb's workers (a base path is kept)
  std::vector<tcp::endpoint> endpoints;
};

// A leg in progress, as the lane's watchdog sees it.
struct leg_watch {
  tcp::socket* socket = nullptr;
  clock_type::time_point last{};  // last time bytes moved (or the leg started)
  clock_type::duration limit{};
  bool timed_out = false;
  std::size_t slot = 0;  // index in lane::watched
};

// One io_context thread with its own connections and results; nothing here is shared.
struct lane {
  net::io_context ioc{1};
  std::vector<std::unique_ptr<http1::client_connection>> idle[2];  // per target
  bench_result res;
  clock_type::time_point last_end{};
  std::mt19937_64 rng;
  int errors_printed = 0;
  // Idle timeouts: legs in progress, checked by one timer per lane instead of one per read.
  std::vector<leg_watch*> watched;
  std::optional<net::steady_timer> watchdog;
  bool watchdog_running = false;
};

struct shared_state {
  explicit shared_state(const bench_options& o) : opts(o) {}
  const bench_options& opts;
  std::vector<target> targets;  // [0]: the URL (or the decode worker), [1]: the prefill worker
  std::string path;
  std::string body;
  std::string head;  // request head for the shared body (not used in direct PD)
  std::string bootstrap_host;
  std::size_t read_chunk = 64 * 1024;
  clock_type::time_point start{}, deadline = clock_type::time_point::max();
  std::atomic<std::uint64_t> issued{0};
  std::atomic<std::int64_t> active{0};
  std::atomic<std::uint64_t> in_flight{0};
  std::atomic<std::uint64_t> peak_in_flight{0};
  std::vector<std::unique_ptr<lane>> lanes;
  std::vector<std::optional<net::executor_work_guard<net::io_context::executor_type>>> guards;
  std::atomic<bool> printed_error_header{false};

  bool claim() {
    if (opts.duration_s > 0 && clock_type::now() >= deadline) return false;
    auto n = issued.fetch_add(1, std::memory_order_relaxed);
    return opts.requests == 0 || n < opts.requests;
  }
  void finished_one() {
    if (active.fetch_sub(1, std::memory_order_acq_rel) == 1)
      for (auto& g : guards) g.reset();
  }
};

std::string make_head(const shared_state& st, const target& t, std::size_t body_size) {
  std::string h;
  http1::append_request_head(h, {.method = "POST",
                                 .target_prefix = t.url.path_prefix,
                                 .target = st.path,
                                 .host = t.url.host_header,
                                 .fields = "User-Agent: pdlb-bench\r\nAccept: */*\r\n",
                                 .content_type = "application/json",
                                 .content_length = body_size});
  return h;
}

// Receives a response as it arrives.
struct sink {
  virtual ~sink() = default;
  virtual void on_header(unsigned status, clock_type::time_point now) = 0;
  virtual void on_body(std::string_view bytes, clock_type::time_point now) = 0;
};

// A leg's outcome: empty string on success, else what went wrong.
struct leg_outcome {
  std::string error;
  bool complete = false;  // the whole response was read
};

// Checks the lane's legs every `period` and cancels the socket operations of those silent for
// longer than their limit; ends when no leg is left (so the io_context can run out of work).
net::awaitable<void> watchdog(lane& ln, clock_type::duration period) {
  while (!ln.watched.empty()) {
    ln.watchdog->expires_after(period);
    co_await ln.watchdog->async_wait(tuple_awaitable);
    const auto now = clock_type::now();
    for (auto* w : ln.watched) {
      if (!w->timed_out && now - w->last > w->limit) {
        w->timed_out = true;
        error_code ignored;
        w->socket->cancel(ignored);
      }
    }
  }
  ln.watchdog_running = false;
}

// Registers a leg with the lane's watchdog for its lifetime.
struct watch_guard {
  watch_guard(lane& l, leg_watch& w, clock_type::duration limit) : ln(l), watch(w) {
    watch.limit = limit;
    watch.last = clock_type::now();
    watch.slot = ln.watched.size();
    ln.watched.push_back(&watch);
    if (!ln.watchdog_running) {
      ln.watchdog_running = true;
      if (!ln.watchdog) ln.watchdog.emplace(ln.ioc);
      auto period = std::clamp<clock_type::duration>(limit / 10, std::chrono::milliseconds(10),
                                                     std::chrono::seconds(1));
      net::co_spawn(ln.ioc, watchdog(ln, period), net::detached);
    }
  }
  ~watch_guard() {
    auto* last = ln.watched.back();
    last->slot = watch.slot;
    ln.watched[watch.slot] = last;
    ln.watched.pop_back();
    if (ln.watched.empty() && ln.watchdog) ln.watchdog->cancel();  // let the watchdog end now
  }
  lane& ln;
  leg_watch& watch;
};

// The response reader's receiver: body bytes go straight from the read buffer to the sink, with the
// time their read completed.
struct to_sink {
  sink& out;
  std::uint64_t& bytes;
  clock_type::time_point now{};  // when the bytes being parsed were read
  unsigned status = 0;

  void on_status(unsigned s) { status = s; }
  void on_header() { out.on_header(status, now); }
  std::size_t on_body(std::string_view body) {
    if (!body.empty()) {
      bytes += body.size();
      out.on_body(body, now);
    }
    return body.size();
  }
};

// True if the leg's watchdog cut the operation that ended with `ec`.
bool timed_out(const leg_watch& watch, const error_code& ec) {
  return watch.timed_out && (ec == net::error::operation_aborted || !ec);
}

// A new connection to target `ti`; null with `error` set if connecting failed.
net::awaitable<std::unique_ptr<http1::client_connection>> open_connection(lane& ln, shared_state& st, int ti,
                                                                          std::string& error) {
  const auto connect_timeout = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double>(st.opts.connect_timeout_s));
  // The buffer grows only for a header (or chunk header) larger than it, up to twice the limit.
  auto conn = std::make_unique<http1::client_connection>(ln.ioc.get_executor(), st.read_chunk,
                                                         2 * static_cast<std::size_t>(header_limit));
  if (auto ec = co_await http1::connect(*conn, st.targets[ti].endpoints, connect_timeout)) {
    error = "connect: " + (ec == beast::error::timeout ? std::string("timed out") : ec.message());
    co_return nullptr;
  }
  co_return conn;
}

// How a failed response read is reported; `in_body`: the header had been read.
std::string read_error(bool in_body, const leg_watch& watch, const error_code& ec) {
  const std::string what = in_body ? "read body: " : "read header: ";
  if (timed_out(watch, ec)) return what + (in_body ? "idle timeout" : "timed out");
  // A header cut by the close has always been reported as the end of the stream.
  if (!in_body && ec == http::error::partial_message) return what + "end of stream";
  return what + ec.message();
}

// Sends one request to target `ti` and feeds the response to `out`. A reused keep-alive connection
// that turns out to be closed by the server is replaced once (the server never saw the request).
net::awaitable<leg_outcome> run_leg(lane& ln, shared_state& st, int ti, std::string_view head,
                                    std::string_view body, sink& out) {
  const auto idle_timeout = std::chrono::duration_cast<clock_type::duration>(
      std::chrono::duration<double>(st.opts.idle_timeout_s));
  std::unique_ptr<http1::client_connection> conn;
  if (!ln.idle[ti].empty()) {
    conn = std::move(ln.idle[ti].back());
    ln.idle[ti].pop_back();
  }
  const bool reused = conn != nullptr;
  leg_outcome res;
  leg_watch watch;
  std::optional<watch_guard> guard;
  for (int attempt = 0;; ++attempt) {
    guard.reset();
    if (!conn) {
      conn = co_await open_connection(ln, st, ti, res.error);
      if (!conn) co_return res;
    }
    auto& socket = conn->stream.socket();
    watch = leg_watch{};
    watch.socket = &socket;
    guard.emplace(ln, watch, idle_timeout);
    const bool may_be_stale = reused && attempt == 0;

    std::array<net::const_buffer, 2> bufs{net::buffer(head), net::buffer(body)};
    auto [wec, wn] = co_await net::async_write(socket, bufs, tuple_awaitable);
    if (wec || watch.timed_out) {
      if (may_be_stale && http1::closed_by_peer(wec)) {
        conn.reset();
        continue;
      }
      res.error = "write: " + (timed_out(watch, wec) ? std::string("timed out") : wec.message());
      co_return res;
    }
    watch.last = clock_type::now();

    http1::response_reader<to_sink> parser(to_sink{out, ln.res.bytes});
    parser.header_limit(header_limit);
    parser.body_limit(boost::none);  // streams are unbounded; whole bodies are capped by the sink
    parser.eager(true);
    // The receive time of the bytes read, taken before any parsing.
    auto on_read = [&] { parser.receiver().now = watch.last = clock_type::now(); };
    auto whole = [&] { return parser.is_done(); };
    const error_code rec = co_await http1::read_response(*conn, parser, whole, on_read, may_be_stale);
    if (rec == http1::client_errc::stale_connection) {
      conn.reset();
      continue;
    }
    if (rec) {
      res.error = read_error(parser.is_header_done(), watch, rec);
      co_return res;
    }
    res.complete = true;
    if (parser.keep_alive()) ln.idle[ti].push_back(std::move(conn));
    co_return res;
  }
}

// The response the client gets: timings and validation.
struct main_sink final : sink {
  main_sink(const bench_options& o, clock_type::time_point sent) : opts(o), t_send(sent) {}

  void on_header(unsigned s, clock_type::time_point) override { status = s; }

  void on_body(std::string_view bytes, clock_type::time_point now) override {
    if (status != 200 || !opts.stream) {
      if (whole.size() + bytes.size() > whole_body_limit) {
        fail("response body over 256 MB");
        return;
      }
      whole.append(bytes);
      return;
    }
    splitter.feed(bytes);
    while (auto ev = splitter.next_event()) handle_event(*ev, now);
  }

  void handle_event(std::string_view ev, clock_type::time_point now) {
    auto data = pdlb::event_data(ev, scratch);
    if (!data) return;  // comments and other fields
    ++events;
    if (saw_done) {
      fail("data after [DONE]");
      return;
    }
    auto info = inspect_event(*data, opts.route, count_logprobs());
    if (info.done) {
      saw_done = true;
      return;
    }
    if (info.error) {
      fail("error event in stream: " + std::string(data->substr(0, 200)));
      return;
    }
    if (info.completion_tokens) completion_tokens = info.completion_tokens;
    check_logprobs(info);
    if (info.write_ns) {
      // One-way latency of this event: its receive time minus the worker's write time (both
      // steady_clock, i.e. CLOCK_MONOTONIC, on the same host).
      const auto recv_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
      event_latency.push_back(
          static_cast<float>(static_cast<double>(recv_ns - *info.write_ns) / 1e6));
    }
    if (info.e2e_latency) {
      double d = ms_between(t_send, now) - *info.e2e_latency * 1000.0;
      if (lag.empty()) {
        first_lag = d;
      } else {
        jitter.push_back(static_cast<float>(d - first_lag));
      }
      lag.push_back(static_cast<float>(d));
    }
    if (!info.token) return;
    ++token_events;
    if (!first_token) {
      first_token = now;
    } else {
      itl.push_back(static_cast<float>(ms_between(last_token, now)));
    }
    last_token = now;
  }

  bool count_logprobs() const {
    return opts.return_logprob && opts.route == route_kind::generate && !opts.direct_pd;
  }

  void check_logprobs(const event_info& info) {
    if (!count_logprobs()) return;
    if (!info.input_logprobs) {
      fail("no meta_info.input_token_logprobs in a return_logprob response");
      return;
    }
    saw_logprobs = true;
    if (opts.input_tokens > 0 && *info.input_logprobs != opts.input_tokens)
      fail("input_token_logprobs has " + std::to_string(*info.input_logprobs) + " entries, expected " +
           std::to_string(opts.input_tokens));
  }

  // Called once the response ended; returns the failure reason, empty if the response is valid.
  std::string finish(const leg_outcome& leg, clock_type::time_point end) {
    if (!leg.error.empty()) return leg.error;
    if (status != 200) {
      std::string snippet = whole.substr(0, 200);
      return "status " + std::to_string(status) + (snippet.empty() ? "" : ": " + snippet);
    }
    if (!failure.empty()) return failure;
    if (opts.stream) {
      if (!splitter.pending().empty() &&
          splitter.pending().find_first_not_of("\r\n") != std::string_view::npos)
        return "stream ended inside an event";
      if (!saw_done) return "stream ended without [DONE]";
    } else {
      auto info = inspect_event(whole, opts.route, count_logprobs());
      if (info.error) return "error body: " + whole.substr(0, 200);
      completion_tokens = info.completion_tokens;
      check_logprobs(info);
      if (!failure.empty()) return failure;
      first_token = end;
      last_token = end;
      token_events = completion_tokens.value_or(0);
    }
    tokens = completion_tokens.value_or(token_events);
    if (opts.check_tokens && tokens != opts.output_tokens)
      return "generated " + std::to_string(tokens) + " tokens, expected " + std::to_string(opts.output_tokens);
    if (opts.stream && token_events == 0) return "stream without a token event";
    return {};
  }

  void fail(std::string why) {
    if (failure.empty()) failure = std::move(why);
  }

  const bench_options& opts;
  clock_type::time_point t_send;
  unsigned status = 0;
  std::string whole;
  pdlb::sse_splitter splitter;
  std::string scratch;
  std::string failure;
  bool saw_done = false;
  bool saw_logprobs = false;
  std::uint64_t events = 0;
  std::uint64_t token_events = 0;
  std::uint64_t tokens = 0;
  std::optional<std::uint64_t> completion_tokens;
  std::optional<clock_type::time_point> first_token;
  clock_type::time_point last_token{};
  std::vector<float> itl, lag, jitter, event_latency;
  double first_lag = 0;
};

// The prefill leg of direct PD: only its status and completeness matter.
struct prefill_sink final : sink {
  void on_header(unsigned s, clock_type::time_point) override { status = s; }
  void on_body(std::string_view bytes, clock_type::time_point) override {
    if (snippet.size() < 200) snippet.append(bytes.substr(0, 200 - snippet.size()));
  }
  unsigned status = 0;
  std::string snippet;
};

void record_failure(lane& ln, shared_state& st, const std::string& why) {
  ++ln.res.failed;
  // Errors are grouped by reason; long reasons (bodies) are cut so similar ones group together.
  std::string key = why.substr(0, 120);
  ++ln.res.errors[key];
  if (ln.errors_printed < error_samples) {
    ++ln.errors_printed;
    std::fprintf(stderr, "pdlb-bench: request failed: %s\n", why.c_str());
  }
  (void)st;
}

net::awaitable<void> run_one(lane& ln, shared_state& st) {
  using namespace net::experimental::awaitable_operators;
  const auto& opts = st.opts;
  auto now_in_flight = st.in_flight.fetch_add(1, std::memory_order_relaxed) + 1;
  for (auto peak = st.peak_in_flight.load(std::memory_order_relaxed);
       now_in_flight > peak && !st.peak_in_flight.compare_exchange_weak(peak, now_in_flight);) {
  }
  try {
    auto t_send = clock_type::now();
    main_sink out(opts, t_send);
    leg_outcome leg;
    std::string why;
    if (!opts.direct_pd) {
      leg = co_await run_leg(ln, st, 0, st.head, st.body, out);
    } else {
      // As a load balancer would: the same bootstrap fields, sent to both workers at once.
      std::string body = "{\"bootstrap_host\":";
      append_json_string(body, st.bootstrap_host);
      body += ",\"bootstrap_port\":" + std::to_string(opts.bootstrap_port) +
              ",\"bootstrap_room\":" + std::to_string(ln.rng() >> 1) + ",";
      body.append(st.body, 1, std::string::npos);
      std::string dhead = make_head(st, st.targets[0], body.size());
      std::string phead = make_head(st, st.targets[1], body.size());
      prefill_sink pout;
      auto [dleg, pleg] = co_await (run_leg(ln, st, 0, dhead, body, out) && run_leg(ln, st, 1, phead, body, pout));
      leg = std::move(dleg);
      if (!pleg.error.empty()) {
        why = "prefill: " + pleg.error;
      } else if (pout.status != 200) {
        why = "prefill: status " + std::to_string(pout.status) + ": " + pout.snippet;
      }
    }
    auto end = clock_type::now();
    std::string main_why = out.finish(leg, end);
    if (why.empty()) why = std::move(main_why);
    ln.last_end = std::max(ln.last_end, end);
    if (!why.empty()) {
      record_failure(ln, st, why);
    } else {
      auto& r = ln.res;
      ++r.ok;
      r.input_tokens += opts.input_tokens;
      r.output_tokens += out.tokens;
      r.events += out.events;
      double e2e = ms_between(t_send, end);
      double ttft = ms_between(t_send, *out.first_token);
      r.e2e.push_back(static_cast<float>(e2e));
      r.ttft.push_back(static_cast<float>(ttft));
      r.send.push_back(static_cast<float>(ms_between(st.start, t_send)));
      if (out.tokens > 1) r.tpot.push_back(static_cast<float>((e2e - ttft) / static_cast<double>(out.tokens - 1)));
      r.itl.insert(r.itl.end(), out.itl.begin(), out.itl.end());
      r.lag.insert(r.lag.end(), out.lag.begin(), out.lag.end());
      r.jitter.insert(r.jitter.end(), out.jitter.begin(), out.jitter.end());
      r.event_latency.insert(r.event_latency.end(), out.event_latency.begin(),
                             out.event_latency.end());
    }
  } catch (const std::exception& e) {
    record_failure(ln, st, std::string("exception: ") + e.what());
  }
  st.in_flight.fetch_sub(1, std::memory_order_relaxed);
}

net::awaitable<void> closed_loop_worker(lane& ln, shared_state& st) {
  while (st.claim()) co_await run_one(ln, st);
  st.finished_one();
}

net::awaitable<void> open_loop_request(lane& ln, shared_state& st) {
  co_await run_one(ln, st);
  st.finished_one();
}

// Poisson arrivals, as bench_serving's --request-rate: exponential gaps with mean 1/rate.
net::awaitable<void> open_loop_dispatcher(shared_state& st) {
  auto& ln0 = *st.lanes[0];
  std::exponential_distribution<double> gap(st.opts.request_rate);
  net::steady_timer timer(ln0.ioc);
  auto next = st.start;
  // --exact-rate: the N arrival times are N uniform draws over N / rate seconds, sorted: a Poisson
  // process conditioned on its count, so its bursts are Poisson's but its mean rate is exactly rate.
  std::vector<double> at;
  if (st.opts.exact_rate) {
    std::uniform_real_distribution<double> u(0.0, static_cast<double>(st.opts.requests) / st.opts.request_rate);
    for (std::uint64_t k = 0; k < st.opts.requests; ++k) at.push_back(u(ln0.rng));
    std::sort(at.begin(), at.end());
  }
  for (std::size_t i = 0; st.claim(); ++i) {
    if (i < at.size())
      next = st.start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(at[i]));
    timer.expires_at(next);
    co_await timer.async_wait(tuple_awaitable);
    auto& ln = *st.lanes[i % st.lanes.size()];
    st.active.fetch_add(1, std::memory_order_relaxed);
    net::co_spawn(ln.ioc, open_loop_request(ln, st), [](std::exception_ptr e) {
      if (e) std::fprintf(stderr, "pdlb-bench: request coroutine ended by an exception\n");
    });
    next += std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(gap(ln0.rng)));
  }
  st.finished_one();
}

target resolve(const std::string& url_text) {
  target t;
  std::string error;
  if (!parse_worker_url(url_text, t.url, error)) throw std::runtime_error(error);
  net::io_context ioc;
  tcp::resolver resolver(ioc);
  error_code ec;
  auto results = resolver.resolve(t.url.host, std::to_string(t.url.port), ec);
  if (ec) throw std::runtime_error("cannot resolve " + url_text + ": " + ec.message());
  for (const auto& r : results) t.endpoints.push_back(r.endpoint());
  return t;
}

}  // namespace

std::string build_body(const bench_options& opts) {
  std::string b;
  const bool ids = opts.input_tokens > 0;
  const std::string text = prompt_text(ids ? opts.input_tokens * 4ull : opts.prompt_chars);
  switch (opts.route) {
    case route_kind::generate:
      b = ids ? "{\"input_ids\":" + id_list(opts.input_tokens) : "{\"text\":";
      if (!ids) append_json_string(b, text);
      b += ",\"sampling_params\":{\"max_new_tokens\":" + std::to_string(opts.output_tokens) +
           ",\"temperature\":0,\"ignore_eos\":true}";
      if (opts.stream) b += ",\"stream\":true";
      if (opts.return_logprob) b += ",\"return_logprob\":true";
      break;
    case route_kind::completions:
      b = "{\"model\":";
      append_json_string(b, opts.model);
      b += ",\"prompt\":";
      if (ids) {
        b += id_list(opts.input_tokens);
      } else {
        append_json_string(b, text);
      }
      break;
    case route_kind::chat:
      b = "{\"model\":";
      append_json_string(b, opts.model);
      b += ",\"messages\":[{\"role\":\"user\",\"content\":";
      append_json_string(b, text);
      b += "}]";
      break;
  }
  if (opts.route != route_kind::generate) {
    b += ",\"max_tokens\":" + std::to_string(opts.output_tokens) + ",\"temperature\":0,\"ignore_eos\":true";
    if (opts.stream) b += ",\"stream\":true,\"stream_options\":{\"include_usage\":true}";
    if (opts.return_logprob) b += opts.route == route_kind::chat ? ",\"logprobs\":true" : ",\"logprobs\":1";
  }
  b += "}";
  return b;
}

bench_result run_bench(const bench_options& opts) {
  if (opts.concurrency == 0 && opts.request_rate <= 0)
    throw std::runtime_error("give --concurrency N (closed loop) or --request-rate R (open loop)");
  if (opts.requests == 0 && opts.duration_s <= 0)
    throw std::runtime_error("give --requests M or --duration S");
  if (opts.exact_rate && (opts.request_rate <= 0 || opts.requests == 0))
    throw std::runtime_error("--exact-rate needs --request-rate R and --requests N");
  if (opts.threads == 0) throw std::runtime_error("--threads must be at least 1");

  shared_state st(opts);
  if (opts.direct_pd) {
    if (opts.prefill_url.empty() || opts.decode_url.empty() || opts.bootstrap_port == 0)
      throw std::runtime_error("--direct-pd needs --prefill URL, --bootstrap-port P and --decode URL");
    st.targets.push_back(resolve(opts.decode_url));
    st.targets.push_back(resolve(opts.prefill_url));
    st.bootstrap_host = st.targets[1].url.bootstrap_host;
  } else {
    st.targets.push_back(resolve(opts.url));
  }
  st.path = std::string(route_path(opts.route));
  st.body = build_body(opts);
  st.head = make_head(st, st.targets[0], st.body.size());
  // Thousands of open streams each hold a read buffer; keep them small then.
  std::size_t expected_open = opts.concurrency ? opts.concurrency : static_cast<std::size_t>(opts.request_rate);
  st.read_chunk = expected_open >= 1000 ? 8 * 1024 : 32 * 1024;

  for (unsigned i = 0; i < opts.threads; ++i) {
    auto ln = std::make_unique<lane>();
    ln->rng.seed(0x5eed0000ull + i +
                 opts.seed.value_or(static_cast<std::uint64_t>(clock_type::now().time_since_epoch().count())));
    st.guards.emplace_back(net::make_work_guard(ln->ioc));
    st.lanes.push_back(std::move(ln));
  }
  st.start = clock_type::now();
  if (opts.duration_s > 0)
    st.deadline = st.start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(opts.duration_s));

  auto log_exception = [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "pdlb-bench: coroutine failed: %s\n", ex.what());
    }
  };
  if (opts.concurrency > 0 && opts.request_rate <= 0) {
    st.active = opts.concurrency;
    for (unsigned i = 0; i < opts.concurrency; ++i) {
      auto& ln = *st.lanes[i % st.lanes.size()];
      net::co_spawn(ln.ioc, closed_loop_worker(ln, st), log_exception);
    }
  } else {
    st.active = 1;
    net::co_spawn(st.lanes[0]->ioc, open_loop_dispatcher(st), log_exception);
  }

  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < st.lanes.size(); ++i) threads.emplace_back([&st, i] { st.lanes[i]->ioc.run(); });
  st.lanes[0]->ioc.run();
  for (auto& t : threads) t.join();

  bench_result total;
  auto end = st.start;
  for (auto& ln : st.lanes) {
    auto& r = ln->res;
    total.ok += r.ok;
    total.failed += r.failed;
    for (auto& [k, v] : r.errors) total.errors[k] += v;
    total.input_tokens += r.input_tokens;
    total.output_tokens += r.output_tokens;
    total.events += r.events;
    total.bytes += r.bytes;
    auto append = [](std::vector<float>& to, const std::vector<float>& from) { to.insert(to.end(), from.begin(), from.end()); };
    append(total.ttft, r.ttft);
    append(total.itl, r.itl);
    append(total.tpot, r.tpot);
    append(total.e2e, r.e2e);
    append(total.send, r.send);
    append(total.lag, r.lag);
    append(total.jitter, r.jitter);
    append(total.event_latency, r.event_latency);
    end = std::max(end, ln->last_end);
  }
  total.duration_s = std::chrono::duration<double>(end - st.start).count();
  total.peak_in_flight = st.peak_in_flight.load();
  return total;
}

}  // namespace pdlb::bench
