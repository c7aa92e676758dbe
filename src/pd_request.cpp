#include "pdlb/pd_request.hpp"

#include "pdlb/logging.hpp"

#include "pdlb/policy.hpp"
#include "pdlb/proxy.hpp"
#include "pdlb/rewrite.hpp"
#include "pdlb/stream_relay.hpp"
#include "pdlb/upstream.hpp"
#include "pdlb/worker_query.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace pdlb {

/// A call to one worker for one leg. It holds the worker's lease (its in-flight count) exactly as
/// long as the worker works on the request: until finish(), or until the call is destroyed, which
/// closes an unfinished connection (the worker sees the close and aborts the request).
class worker_call {
 public:
  worker_call(worker& w, thread_context& ctx)
      : worker_(w), call_(*w.host, ctx), started_(std::chrono::steady_clock::now()) {
    worker_.in_flight.fetch_add(1, std::memory_order_relaxed);
    worker_.requests.fetch_add(1, std::memory_order_relaxed);
  }
  ~worker_call() { end_lease(); }
  worker_call(const worker_call&) = delete;
  worker_call& operator=(const worker_call&) = delete;

  upstream_call& call() { return call_; }
  worker& target() { return worker_; }
  /// Records the worker's response time (now, since the call began) in this thread's slot.
  void observe_response(thread_context& ctx) {
    worker_.slot(ctx.index()).response.observe(std::chrono::steady_clock::now() - started_);
  }
  /// The answer was read whole: the connection goes back to the pool, the lease ends.
  void finish() {
    call_.release();
    end_lease();
  }

 private:
  void end_lease() {
    if (leased_) worker_.in_flight.fetch_sub(1, std::memory_order_relaxed);
    leased_ = false;
  }
  worker& worker_;
  upstream_call call_;
  std::chrono::steady_clock::time_point started_;
  bool leased_ = true;
};

void request_record::assign_id(std::string_view client_value, std::mt19937_64& rng) {
  const bool usable = !client_value.empty() && client_value.size() <= max_id &&
                      std::all_of(client_value.begin(), client_value.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  char* out = header_.data();
  std::copy(prefix.begin(), prefix.end(), out);
  out += prefix.size();
  if (usable) {
    std::copy(client_value.begin(), client_value.end(), out);
    id_size_ = client_value.size();
  } else {
    // Two hex digits per byte from a table: a per-digit loop was 0.7 % of a small request (callgrind).
    static constexpr auto pairs = [] {
      std::array<char, 512> t{};
      constexpr char hex[] = "0123456789abcdef";
      for (int b = 0; b < 256; ++b) {
        t[2 * b] = hex[b >> 4];
        t[2 * b + 1] = hex[b & 15];
      }
      return t;
    }();
    for (int half = 0; half < 2; ++half) {
      std::uint64_t v = rng();
      for (int i = 0; i < 8; ++i, v >>= 8) std::memcpy(out + half * 16 + 2 * i, &pairs[2 * (v & 0xff)], 2);
    }
    id_size_ = 32;
  }
  out[id_size_] = '\r';
  out[id_size_ + 1] = '\n';
}

leg_result::leg_result() = default;
leg_result::~leg_result() = default;
leg_result::leg_result(leg_result&&) noexcept = default;
leg_result& leg_result::operator=(leg_result&&) noexcept = default;

attempt_verdict judge_attempt(const prefill_result& p, const decode_result& d) {
  if (p.end == leg_end::failed || (p.end == leg_end::answered && !p.ok()))
    return attempt_verdict::prefill_failed;
  if (d.end == leg_end::failed) return attempt_verdict::decode_failed;
  // The decode's own error answer is relayed; the prefill was cancelled because of it.
  if (d.end == leg_end::answered && !d.ok()) return attempt_verdict::decode_answer;
  if (p.end == leg_end::cancelled || d.end == leg_end::cancelled) return attempt_verdict::client_gone;
  return attempt_verdict::decode_answer;
}

namespace {

constexpr std::size_t error_answer_limit = 64 * 1024;

bool is_2xx(unsigned status) { return status >= 200 && status < 300; }

http::status status_for(const error_code& ec) {
  if (ec == beast::error::timeout) return http::status::gateway_timeout;
  if (ec == upstream_errc::pool_exhausted) return http::status::service_unavailable;
  return http::status::bad_gateway;
}

failure_kind kind_of(const error_code& ec, upstream_call::phase where) {
  if (ec == net::error::connection_refused) return failure_kind::refused;
  if (ec == beast::error::timeout) return failure_kind::timeout;
  if (where == upstream_call::phase::connect) return failure_kind::connect;
  return failure_kind::reset;
}

// A leg's result for a call that failed with `ec`; a cancelled call is not a failure of its own.
template <class Result>
std::unique_ptr<Result> failed_leg(worker_call& wc, const error_code& ec) {
  auto out = std::make_unique<Result>();
  if (ec == net::error::operation_aborted) return out;  // cancelled
  Result& r = *out;
  r.target = &wc.target();
  r.end = leg_end::failed;
  r.failure = describe_failure(wc.target(), wc.call(), ec);
  r.failure_status = status_for(ec);
  r.kind = kind_of(ec, wc.call().where());
  // pdlb's own limits are nobody's failure: no free connection slot, an answer over --max-body-size.
  r.worker_fault = ec != upstream_errc::pool_exhausted && ec != upstream_errc::response_too_large;
  return out;
}

// Answers that say the worker is in trouble rather than the request: another pair may serve it.
bool retryable_status(unsigned status) {
  return status == 500 || status == 502 || status == 503 || status == 504;
}

// Stops the other leg at once when one fails or answers an error: its connection is closed, so the
// worker frees what it holds (a prefill whose decode refused the request would otherwise keep its
// KV until its bootstrap timeout). A leg that answered well waits for the other.
struct attempt_condition {
  template <class Result>
  net::cancellation_type_t operator()(std::exception_ptr e, const std::unique_ptr<Result>& r) const {
    const bool bad = r && (r->end == leg_end::failed || (r->end == leg_end::answered && !r->ok()));
    return e || bad ? net::cancellation_type::terminal : net::cancellation_type::none;
  }
};

}  // namespace

// One PD request. Runs on the client connection's thread; every member is this request's own.
class pd_request {
 public:
  pd_request(load_balancer& lb, exchange& ex, std::string_view path, bool openai, request_record& record)
      : lb_(lb), ex_(ex), ctx_(ex.context()), path_(path), openai_(openai), record_(record) {}

  net::awaitable<void> serve();

 private:
  // The legs' results travel by pointer: by value, each went through some fifteen moves (the
  // parallel group, the coroutine frames), 5 % of a small request's instructions (callgrind).
  struct attempt_result {
    std::unique_ptr<prefill_result> p;
    std::unique_ptr<decode_result> d;
    prefill_result& prefill() const { return *p; }
    decode_result& decode() const { return *d; }
  };

  /// Runs both legs once on the pair (p, d), with new bootstrap rooms.
  net::awaitable<attempt_result> attempt(worker& p, worker& d);
  /// Tells failure detection how each worker did; returns the worker to blame when the attempt
  /// failed in a way another pair may not (see docs/operations.md), else nullptr.
  worker* judge_workers(const attempt_result& r, attempt_verdict verdict);
  net::awaitable<std::unique_ptr<prefill_result>> prefill_leg(std::unique_ptr<worker_call> wc, std::string_view body);
  net::awaitable<std::unique_ptr<decode_result>> decode_leg(std::unique_ptr<worker_call> wc, std::string_view body);
  /// Answers the client from an attempt's results.
  net::awaitable<void> answer(attempt_result r);
  /// Relays the decode's stream; the status line is out once this starts.
  net::awaitable<void> relay(worker_call& decode, const prefill_logprobs& logprobs);
  /// Relays the decode's stream while the prefill's is read to its end, at once.
  net::awaitable<void> relay_beside(worker_call& decode, worker_call& prefill);
  /// Reads the rest of the prefill's stream (its events go nowhere) so its connection is reused.
  net::awaitable<void> drain(worker_call& prefill);
  /// Answers an error of pdlb's own.
  net::awaitable<void> fail(http::status status, std::string_view message);

  load_balancer& lb_;
  exchange& ex_;
  thread_context& ctx_;
  std::string_view path_;
  bool openai_;
  /// Counts the legs of an attempt that were stopped, and why.
  void count_cancelled(const attempt_result& r, attempt_verdict verdict);
  void count_cancelled(worker_role role, cancel_reason why) {
    ctx_.metrics().cancelled_legs[role == worker_role::prefill ? 0 : 1][static_cast<std::size_t>(why)].add();
  }

  request_info info_;
  request_record& record_;
  std::string_view forward_headers_;  // to both workers: the request id, the client's trace context
  std::string forward_storage_;       // their bytes when there is a trace context to add
  std::shared_ptr<const worker_set> workers_;  // the set this request picks from, kept alive
};

net::awaitable<void> pd_request::serve() {
  inspect_result inspected =
      inspect_request(ex_.req().body(), openai_ ? route_kind::openai : route_kind::generate);
  if (!inspected.ok) co_return co_await fail(http::status::bad_request, inspected.error);
  info_ = std::move(inspected.info);
  forward_headers_ = record_.id_header();
  const auto traceparent = ex_.req()["traceparent"];
  const auto tracestate = ex_.req()["tracestate"];
  if (!traceparent.empty() || !tracestate.empty()) {
    // W3C trace context is forwarded unchanged; pdlb adds no span of its own.
    forward_storage_.assign(forward_headers_);
    if (!traceparent.empty()) forward_storage_.append("traceparent: ").append(traceparent).append("\r\n");
    if (!tracestate.empty()) forward_storage_.append("tracestate: ").append(tracestate).append("\r\n");
    forward_headers_ = forward_storage_;
  }
  workers_ = lb_.registry_.snapshot();
  std::vector<const worker*> avoid;  // workers this request failed on
  for (unsigned n = 0;; ++n) {
    auto p = lb_.pick(*workers_, worker_role::prefill, ctx_.rng(), avoid);
    if (!p) co_return co_await fail(http::status::service_unavailable, "no prefill worker available");
    auto d = lb_.pick(*workers_, worker_role::decode, ctx_.rng(), avoid);
    if (!d) co_return co_await fail(http::status::service_unavailable, "no decode worker available");
    attempt_result r = co_await attempt(*p, *d);
    record_.prefill = std::move(p);
    record_.decode = std::move(d);
    const attempt_verdict verdict = judge_attempt(r.prefill(), r.decode());
    count_cancelled(r, verdict);
    worker* blamed = judge_workers(r, verdict);
    if (blamed && n < lb_.cfg_.max_retries) {
      // Nothing reached the client and both legs are over: run the pair again, elsewhere.
      lb_.counters_.retries.fetch_add(1, std::memory_order_relaxed);
      ++record_.retries;
      const retry_reason why = verdict == attempt_verdict::prefill_failed  ? retry_reason::prefill_failed
                               : verdict == attempt_verdict::decode_failed ? retry_reason::decode_failed
                                                                           : retry_reason::decode_status;
      ctx_.metrics().retries[static_cast<std::size_t>(why)].add();
      const leg_result& f = verdict == attempt_verdict::prefill_failed ? static_cast<const leg_result&>(r.prefill())
                                                                      : static_cast<const leg_result&>(r.decode());
      const log_fields fields(record_.id(), blamed->url());
      spdlog::warn("request {}: retrying on another pair (attempt {} of {}): {}", record_.id(), n + 2,
                   lb_.cfg_.max_retries + 1,
                   f.failure.empty() ? "decode worker " + blamed->url() + " answered " + std::to_string(f.status)
                                     : f.failure);
      avoid.push_back(blamed);
      continue;
    }
    co_return co_await answer(std::move(r));
  }
}

worker* pd_request::judge_workers(const attempt_result& r, attempt_verdict verdict) {
  // Passive failure detection: a worker that answered (a 4xx too) is healthy; a 5xx or a transport
  // failure counts against it. Cancelled legs say nothing.
  auto note = [&](const leg_result& leg) {
    if (!leg.target) return;
    if (leg.end == leg_end::answered) {
      if (leg.status >= 500)
        lb_.record_failure(*leg.target,
                           reports_kv_handoff_failure(leg.body) ? failure_kind::bootstrap : failure_kind::status,
                           "answered " + std::to_string(leg.status));
      else
        leg.target->record_success();
    } else if (leg.end == leg_end::failed && leg.worker_fault) {
      lb_.record_failure(*leg.target, leg.kind, leg.failure);
    }
  };
  note(r.prefill());
  note(r.decode());
  switch (verdict) {
    case attempt_verdict::prefill_failed:
      if (r.prefill().end == leg_end::failed ? r.prefill().worker_fault : retryable_status(r.prefill().status))
        return r.prefill().target;
      return nullptr;
    case attempt_verdict::decode_failed:
      return r.decode().worker_fault ? r.decode().target : nullptr;
    case attempt_verdict::decode_answer:
      // The decode's own answer; before a stream is relayed, a worker-trouble status is retried.
      return !r.decode().stream && retryable_status(r.decode().status) ? r.decode().target : nullptr;
    case attempt_verdict::client_gone:
      return nullptr;
  }
  return nullptr;
}

void pd_request::count_cancelled(const attempt_result& r, attempt_verdict verdict) {
  // A leg that ended cancelled was stopped by the other leg's failure or by the client leaving.
  auto reason_for = [&](worker_role stopped) {
    if (verdict == attempt_verdict::client_gone) return cancel_reason::client_gone;
    return stopped == worker_role::prefill ? cancel_reason::decode_failed : cancel_reason::prefill_failed;
  };
  if (r.prefill().end == leg_end::cancelled) count_cancelled(worker_role::prefill, reason_for(worker_role::prefill));
  if (r.decode().end == leg_end::cancelled) count_cancelled(worker_role::decode, reason_for(worker_role::decode));
}

net::awaitable<pd_request::attempt_result> pd_request::attempt(worker& p, worker& d) {
  std::vector<std::uint64_t> rooms(info_.batch_size.value_or(1));
  for (auto& r : rooms) r = random_room(ctx_.rng());
  // Both legs send it; they end before this frame does.
  const std::string body = rewrite_request(
      ex_.req().body(), info_, bootstrap_fields{p.host->url().bootstrap_host, p.bootstrap_port}, rooms);
  // Both connections are reserved before either leg starts (see upstream_call::reserve_pair).
  auto pc = std::make_unique<worker_call>(p, ctx_);
  auto dc = std::make_unique<worker_call>(d, ctx_);
  if (!upstream_call::try_reserve_pair(pc->call(), dc->call())) {
    if (auto ec = co_await upstream_call::reserve_pair(pc->call(), dc->call()))
      co_return attempt_result{failed_leg<prefill_result>(*pc, ec), failed_leg<decode_result>(*dc, ec)};
  }
  auto executor = co_await net::this_coro::executor;
  auto prefill = prefill_leg(std::move(pc), body);
  auto decode = decode_leg(std::move(dc), body);
  auto [order, pe, pr, de, dr] =
      co_await net::experimental::make_parallel_group(
          net::co_spawn(executor, std::move(prefill), net::deferred),
          net::co_spawn(executor, std::move(decode), net::deferred))
          .async_wait(attempt_condition{}, net::use_awaitable);
  // A leg that threw was cancelled; its default result says so.
  if (pe || !pr) pr = std::make_unique<prefill_result>();
  if (de || !dr) dr = std::make_unique<decode_result>();
  co_return attempt_result{std::move(pr), std::move(dr)};
}

net::awaitable<std::unique_ptr<prefill_result>> pd_request::prefill_leg(std::unique_ptr<worker_call> wc, std::string_view body) {
  worker& p = wc->target();
  auto& call = wc->call();
  if (auto ec = co_await call.start("POST", path_, body, forward_headers_)) co_return failed_leg<prefill_result>(*wc, ec);
  wc->observe_response(ctx_);  // a PD prefill answers once its KV cache is handed off
  auto out = std::make_unique<prefill_result>();
  prefill_result& r = *out;
  r.end = leg_end::answered;
  r.target = &p;
  r.status = call.status();
  if (!is_2xx(r.status)) {
    // The client gets the prefill's status and its words (a part of them is enough).
    co_await call.read_all(r.body, error_answer_limit);
    r.failure = "prefill worker " + p.host->url().url + " answered " + std::to_string(r.status) +
                ": " + error_snippet(r.body);
    r.failure_status = static_cast<http::status>(r.status);
    co_return out;
  }
  if (!info_.stream) {
    if (auto ec = co_await call.read_all(r.body, lb_.cfg_.max_body_size))
      co_return failed_leg<prefill_result>(*wc, ec);
    if (info_.return_logprob) extract_input_logprobs(r.body, r.logprobs);
    r.body.clear();
  } else if (!info_.return_logprob) {
    // Its events go nowhere: the body is read (so that the connection can be reused) while the
    // decode's stream is relayed, which may start before the prefill's stream has ended.
    r.stream = std::move(wc);
    co_return out;
  } else {
    // Merging needs the prefill's logprobs before the first decode event: read its whole stream.
    prefill_stream_reader reader;
    for (;;) {
      body_piece piece;
      if (auto ec = co_await call.read_some(piece)) co_return failed_leg<prefill_result>(*wc, ec);
      reader.feed(piece.bytes());
      if (piece.done) break;
    }
    r.logprobs = std::move(reader.logprobs());
  }
  wc->finish();
  co_return out;
}

net::awaitable<std::unique_ptr<decode_result>> pd_request::decode_leg(std::unique_ptr<worker_call> wc, std::string_view body) {
  worker& d = wc->target();
  auto& call = wc->call();
  if (auto ec = co_await call.start("POST", path_, body, forward_headers_)) co_return failed_leg<decode_result>(*wc, ec);
  auto out = std::make_unique<decode_result>();
  decode_result& r = *out;
  r.end = leg_end::answered;
  r.target = &d;
  r.status = call.status();
  r.content_type = call.content_type();
  if (info_.stream && is_2xx(r.status)) {
    r.stream = std::move(wc);  // relayed once the prefill is known to be good; TTFT at its first byte
    co_return out;
  }
  wc->observe_response(ctx_);
  if (auto ec = co_await call.read_all(r.body, lb_.cfg_.max_body_size))
    co_return failed_leg<decode_result>(*wc, ec);
  wc->finish();
  co_return out;
}

net::awaitable<void> pd_request::answer(attempt_result r) {
  auto& counters = lb_.counters_;
  const attempt_verdict verdict = judge_attempt(r.prefill(), r.decode());
  switch (verdict) {
    case attempt_verdict::client_gone:
      record_.client_gone = true;
      ex_.close_after();
      co_return;
    case attempt_verdict::prefill_failed:
    case attempt_verdict::decode_failed: {
      const leg_result& f = verdict == attempt_verdict::prefill_failed
                                ? static_cast<const leg_result&>(r.prefill())
                                : static_cast<const leg_result&>(r.decode());
      const log_fields fields(record_.id(), f.target ? std::string_view(f.target->url()) : std::string_view());
      spdlog::warn("request {} failed: {}", record_.id(), f.failure);
      co_return co_await fail(f.failure_status, f.failure);
    }
    case attempt_verdict::decode_answer:
      break;
  }
  auto& dr = r.decode();
  if (dr.stream && r.prefill().stream) co_return co_await relay_beside(*dr.stream, *r.prefill().stream);
  if (dr.stream) co_return co_await relay(*dr.stream, r.prefill().logprobs);
  // The decode's whole answer (its own error answer included, as minilb relays it).
  if (dr.status >= 400) counters.errors.fetch_add(1, std::memory_order_relaxed);
  if (info_.return_logprob && is_2xx(dr.status)) {
    if (auto merged = merge_input_logprobs(dr.body, r.prefill().logprobs)) dr.body = std::move(*merged);
  }
  co_await ex_.respond(static_cast<http::status>(dr.status), dr.body,
                       dr.content_type.empty() ? std::string_view("application/json")
                                               : std::string_view(dr.content_type));
}

net::awaitable<void> pd_request::relay(worker_call& decode, const prefill_logprobs& logprobs) {
  stream_relay relay(info_.return_logprob ? &logprobs : nullptr);
  event_end_counter events;  // for the metrics
  if (co_await ex_.begin_stream(http::status::ok)) {
    record_.client_gone = true;
    ex_.close_after();  // the client is gone
    co_return;
  }
  bool first_byte = true;
  for (;;) {
    body_piece piece;
    if (auto ec = co_await decode.call().read_some(piece)) {
      if (ec == net::error::operation_aborted) {
        record_.client_gone = true;
        ex_.close_after();  // cancelled: the client left
        co_return;
      }
      // The client has its status line: tell it in the stream, and end it without [DONE].
      lb_.counters_.errors.fetch_add(1, std::memory_order_relaxed);
      const std::string message = describe_failure(decode.target(), decode.call(), ec);
      lb_.record_failure(decode.target(), kind_of(ec, decode.call().where()), message);
      const log_fields fields(record_.id(), decode.target().url());
      spdlog::warn("request {}: stream failed: {}", record_.id(), message);
      if (!co_await ex_.write_chunk(relay.fail(message))) co_await ex_.end_stream();
      co_return;
    }
    if (first_byte && piece.size > 0) {
      decode.observe_response(ctx_);  // the decode's time to first token
      first_byte = false;
    }
    // The piece lives in the thread's scratch: it is written (or copied) before any suspension.
    const relay_output out = relay.feed(piece.bytes(), piece.done);
    ctx_.metrics().stream_events.add(events.feed(out.head) + events.feed(out.tail));
    error_code wec = ex_.put_chunk(out.head, out.tail);
    const bool done = piece.done;
    piece = body_piece{};
    if (!wec) wec = co_await ex_.flush();
    if (wec) {
      record_.client_gone = true;
      ex_.close_after();  // the client is gone; the decode is cancelled as `decode` closes
      co_return;
    }
    if (done) break;
  }
  decode.finish();
  co_await ex_.end_stream();
}

namespace {

// Distinct types for the two members of relay_beside's group, so that its condition can tell them
// apart: the relay's end (whole, failed, or the client gone) stops a prefill stream still being read,
// as nothing waits for it any more; the prefill's end stops nothing.
struct relay_ended {};
struct prefill_drained {};
struct relay_condition {
  net::cancellation_type_t operator()(std::exception_ptr, relay_ended) const {
    return net::cancellation_type::terminal;
  }
  net::cancellation_type_t operator()(std::exception_ptr, prefill_drained) const {
    return net::cancellation_type::none;
  }
};

}  // namespace

net::awaitable<void> pd_request::relay_beside(worker_call& decode, worker_call& prefill) {
  static const prefill_logprobs no_logprobs;
  auto executor = co_await net::this_coro::executor;
  auto relay_op = [&]() -> net::awaitable<relay_ended> {
    co_await relay(decode, no_logprobs);
    co_return relay_ended{};
  };
  auto drain_op = [&]() -> net::awaitable<prefill_drained> {
    co_await drain(prefill);
    co_return prefill_drained{};
  };
  auto [order, re, r, pe, p] = co_await net::experimental::make_parallel_group(
                                   net::co_spawn(executor, relay_op(), net::deferred),
                                   net::co_spawn(executor, drain_op(), net::deferred))
                                   .async_wait(relay_condition{}, net::use_awaitable);
  if (re) {
    record_.client_gone = true;
    ex_.close_after();  // the relay was cancelled: the client left
  }
}

net::awaitable<void> pd_request::drain(worker_call& prefill) {
  for (;;) {
    body_piece piece;
    if (auto ec = co_await prefill.call().read_some(piece)) {
      // The decode has what it needs from this prefill (or will fail on its own): the relay goes
      // on, and only the prefill's health hears of it.
      if (ec != net::error::operation_aborted)
        lb_.record_failure(prefill.target(), kind_of(ec, prefill.call().where()),
                           describe_failure(prefill.target(), prefill.call(), ec));
      else  // the relay ended first (the prefill's stream is cut: its worker sees the close)
        count_cancelled(worker_role::prefill,
                        record_.client_gone ? cancel_reason::client_gone : cancel_reason::relay_ended);
      co_return;
    }
    if (piece.done) break;
  }
  prefill.finish();
}

net::awaitable<void> pd_request::fail(http::status status, std::string_view message) {
  lb_.counters_.errors.fetch_add(1, std::memory_order_relaxed);
  co_await ex_.respond(status, json_error_body(message));
}

net::awaitable<void> serve_pd_request(load_balancer& lb, exchange& ex, std::string_view path, bool openai,
                                      request_record& record) {
  pd_request r(lb, ex, path, openai, record);
  co_await r.serve();
}

}  // namespace pdlb
