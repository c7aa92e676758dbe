#include "engine.hpp"

#include "model.hpp"
#include "pdlb/listener.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <ctime>

namespace pdlb::sim {

namespace beast = boost::beast;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using namespace net::experimental::awaitable_operators;

namespace {

constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);

// CPU time of this process: with the machine shared, it tells whether the simulator itself could
// keep up with its model, whatever the wall clock says.
double process_cpu_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1000.0 + static_cast<double>(ts.tv_nsec) / 1e6;
}

double ms_between(clock::time_point a, clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

clock::duration from_ms(double ms) {
  return std::chrono::duration_cast<clock::duration>(std::chrono::duration<double, std::milli>(ms));
}

void log_exception(const char* what, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const boost::system::system_error& ex) {
    if (ex.code() != net::error::operation_aborted) spdlog::error("{}: {}", what, ex.what());
  } catch (const std::exception& ex) {
    spdlog::error("{}: {}", what, ex.what());
  }
}

}  // namespace

void wake_signal::resume() {
  if (!waiter) return;
  handler_type h(std::move(*waiter));
  waiter.reset();
  // Everything runs on the one io_context, the coroutine's executor included. Posted as a plain
  // function to the concrete executor: no type-erased dispatch through any_io_executor and no
  // work-tracking wrapper around the handler (the server keeps the io_context running).
  net::post(ioc, [h = std::move(h)]() mutable { std::move(h)(); });
}

namespace {

// Cancellation of a parked wait_for (the client left): resume it; wait_for then sees the
// cancellation and throws. The coroutine clears its slot when it resumes, so this never outlives
// the wait.
struct wake_cancel {
  wake_signal* s;
  void operator()(net::cancellation_type type) {
    if (type != net::cancellation_type::none) s->resume();
  }
};

}  // namespace

net::awaitable<void> wait_for(wake_signal& s) {
  while (!s.pending) {
    co_await net::async_initiate<const net::use_awaitable_t<>&, void()>(
        [&s](wake_signal::handler_type handler) {
          auto slot = net::get_associated_cancellation_slot(handler);
          if (slot.is_connected()) slot.template emplace<wake_cancel>(wake_cancel{&s});
          s.waiter.emplace(std::move(handler));
        },
        net::use_awaitable);
    auto cs = co_await net::this_coro::cancellation_state;
    if (cs.cancelled() != net::cancellation_type::none)
      throw boost::system::system_error(net::error::operation_aborted);
  }
  s.pending = false;
}

engine::engine(net::io_context& ioc, const sim_options& opts)
    : ioc_(ioc),
      opts_(opts),
      work_(ioc.get_executor()),
      sleep_timer_(ioc),
      step_timer_(ioc) {}

engine::~engine() = default;

void engine::start() {
  if (opts_.role == worker_role::prefill) {
    bootstrap_acceptor_ = open_listener(ioc_, opts_.host, opts_.bootstrap_port, 4096);
    bootstrap_port_ = bootstrap_acceptor_->local_endpoint().port();
    net::co_spawn(ioc_, bootstrap_accept_loop(),
                  [](std::exception_ptr e) { log_exception("bootstrap accept loop", e); });
    net::co_spawn(ioc_, prefill_loop(),
                  [](std::exception_ptr e) { log_exception("prefill loop", e); });
  } else {
    net::co_spawn(ioc_, decode_loop(),
                  [](std::exception_ptr e) { log_exception("decode loop", e); });
  }
}

void engine::stop() {
  if (stopped_) return;
  stopped_ = true;
  std::vector<request_ptr> left;
  for (auto& [ptr, r] : live_) left.push_back(r);
  for (auto& r : left) abort(*r, "server shutting down");
  work_.notify();
  step_timer_.cancel();
  sleep_timer_.cancel();
  error_code ignored;
  if (bootstrap_acceptor_) bootstrap_acceptor_->close(ignored);
  for (auto* stream : bootstrap_streams_) stream->socket().close(ignored);
  for (auto& [room, waiters] : room_waiters_)
    for (auto* w : waiters) w->timer.cancel();
  kv_idle_.clear();
}

// ---------------------------------------------------------------------------------------------
// Request life cycle.

void engine::submit(const request_ptr& r) {
  ++received_;
  live_.emplace(r.get(), r);
  if (opts_.role == worker_role::prefill) {
    r->ph = phase::queued;
    ++queued_n_;
    queue_.push_back(r);
    work_.notify();
  } else {
    r->ph = phase::waiting_kv;
    ++waiting_kv_n_;
    // The completion handler holds the request too: the cancellation signal bound to the
    // operation lives inside it and must outlive the operation (co_spawn clears the slot after the
    // coroutine frame, which may hold the last other reference, is gone; UBSan caught it).
    net::co_spawn(ioc_, fetch_kv(r),
                  net::bind_cancellation_slot(r->kv_cancel.slot(), [r](std::exception_ptr e) {
                    log_exception("KV fetch", e);
                  }));
  }
  changed();
}

void engine::leave_phase(sim_request& r) {
  switch (r.ph) {
    case phase::waiting_kv:
      --waiting_kv_n_;
      break;
    case phase::queued:
      --queued_n_;
      break;
    case phase::running:
      --running_n_;
      if (opts_.role == worker_role::decode) {
        kv_reserved_ -= r.kv_reserved;
        kv_used_ -= r.input_len() + r.generated;
        r.kv_reserved = 0;
      }
      break;
    case phase::done:
      break;
  }
  r.ph = phase::done;
  live_.erase(&r);
}

void engine::notify(sim_request& r) {
  if (r.wake) r.wake->notify();
}

void engine::finish(sim_request& r, outcome o) {
  if (r.ph == phase::done) return;
  leave_phase(r);
  r.result = o;
  if (o == outcome::finished) ++finished_;
  notify(r);
}

void engine::fail(sim_request& r, const std::string& why) {
  if (r.ph == phase::done) return;
  leave_phase(r);
  r.result = outcome::failed;
  r.error = why;
  r.error_status = 500;
  ++failed_;
  spdlog::error("{}", why);
  notify(r);
  changed();
}

void engine::abort(sim_request& r, const std::string& why) {
  if (r.ph == phase::done) return;
  bool fetching = r.ph == phase::waiting_kv;
  leave_phase(r);
  r.result = outcome::aborted;
  r.error = why;
  ++aborted_;
  notify(r);
  // Emitted last: the fetch coroutine sees phase::done when it resumes and returns.
  if (fetching) r.kv_cancel.emit(net::cancellation_type::terminal);
  changed();
}

std::size_t engine::abort_by_rid(const std::string& rid, bool all) {
  std::vector<request_ptr> victims;
  for (auto& [ptr, r] : live_)
    if (all || r->rid == rid) victims.push_back(r);
  for (auto& r : victims) {
    const char* why = r->ph == phase::running ? "Abort in running batch" : "Abort in waiting queue";
    abort(*r, why);
  }
  return victims.size();
}

void engine::set_slow_down(double seconds) {
  forward_sleep_s_ = seconds > 0 ? seconds : 0;
  spdlog::info("slow_down: forward_sleep_time={}", forward_sleep_s_);
  // A sleep in progress ends now; the next step sleeps with the new value.
  sleep_timer_.cancel();
}

net::awaitable<void> engine::forward_sleep() {
  if (forward_sleep_s_ <= 0) co_return;
  sleep_timer_.expires_after(from_ms(forward_sleep_s_ * 1000.0));
  co_await sleep_timer_.async_wait(tuple_awaitable);
}

// ---------------------------------------------------------------------------------------------
// Decode: KV handshake with the prefill worker.

net::awaitable<void> engine::fetch_kv(request_ptr r) {
  auto ex = co_await net::this_coro::executor;
  const auto deadline = r->created + from_ms(opts_.waiting_timeout_s * 1000.0);
  const std::string room = std::to_string(r->bootstrap_room);
  auto transfer_error = [&](const std::string& reason) {
    return fmt::format(
        "Decode transfer failed for request rank=0 decode_req.req.rid='{}' "
        "decode_req.req.bootstrap_room={} with exception KVTransferError(bootstrap_room={}): {}",
        r->rid, room, room, reason);
  };
  if (!r->bootstrap_port) {
    fail(*r, transfer_error("bootstrap_port is null: cannot reach the prefill bootstrap server"));
    co_return;
  }
  std::string host = r->bootstrap_host;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port = std::to_string(*r->bootstrap_port);

  auto backoff = std::chrono::milliseconds(10);
  net::steady_timer pause(ex);
  std::string buf;
  auto& idle = kv_idle_[host + " " + port];
  for (;;) {
    if (r->ph != phase::waiting_kv) co_return;
    auto now = clock::now();
    if (now >= deadline) {
      fail(*r, transfer_error(fmt::format("Request {} timed out after {:.1f}s in KVPoll.WaitingForInput",
                                          room, std::chrono::duration<double>(now - r->created).count())));
      co_return;
    }
    auto remaining = deadline - now;
    auto bounded = [&](clock::duration cap) { return std::min<clock::duration>(remaining, cap); };

    // A connection to this bootstrap server left idle by an earlier fetch, if any (SGLang's KV
    // receivers keep theirs too); otherwise a new one.
    std::unique_ptr<beast::tcp_stream> stream;
    const bool reused = !idle.empty();
    if (reused) {
      stream = std::move(idle.back());
      idle.pop_back();
    } else {
      // Resolve: IP literals directly, names through the resolver under a timeout.
      std::vector<tcp::endpoint> endpoints;
      error_code aec;
      auto addr = net::ip::make_address(host, aec);
      if (!aec) {
        endpoints.emplace_back(addr, static_cast<std::uint16_t>(*r->bootstrap_port));
      } else {
        tcp::resolver resolver(ex);
        net::steady_timer limit(ex, bounded(std::chrono::seconds(5)));
        auto res = co_await (resolver.async_resolve(host, port, tuple_awaitable) ||
                             limit.async_wait(tuple_awaitable));
        if (res.index() == 0) {
          auto [rec, results] = std::get<0>(res);
          if (!rec)
            for (auto& e : results) endpoints.push_back(e.endpoint());
        }
      }
      if (!endpoints.empty() && r->ph == phase::waiting_kv) {
        stream = std::make_unique<beast::tcp_stream>(ex);
        stream->expires_after(bounded(std::chrono::seconds(2)));
        auto [cec, ep] = co_await stream->async_connect(endpoints, tuple_awaitable);
        if (cec) stream.reset();
      }
    }

    bool got = false;
    bool stale = false;  // a reused connection the prefill had closed: retry at once
    if (stream && r->ph == phase::waiting_kv) {
      std::string line = "WAIT " + room + "\n";
      stream->expires_after(bounded(std::chrono::seconds(5)));
      auto [wec, wn] = co_await net::async_write(*stream, net::buffer(line), tuple_awaitable);
      stale = reused && wec && wec != beast::error::timeout;
      if (!wec && r->ph == phase::waiting_kv) {
        // The prefill answers when the room is done; wait for it up to the waiting timeout.
        stream->expires_at(deadline);
        buf.clear();
        auto [rec, rn] = co_await net::async_read_until(*stream, net::dynamic_buffer(buf), '\n',
                                                        tuple_awaitable);
        if (!rec && buf.compare(0, rn, "DONE " + room + "\n") == 0) got = true;
        stale = reused && buf.empty() &&
                (rec == net::error::eof || rec == net::error::connection_reset);
      }
    }
    if (r->ph != phase::waiting_kv) co_return;  // aborted: the connection closes with `stream`
    if (got) {
      if (buf.size() == std::string::size_type(buf.find('\n') + 1) && idle.size() < max_idle_kv) {
        stream->expires_never();
        idle.push_back(std::move(stream));
      }
      kv_arrived(r);
      co_return;
    }
    if (stale) continue;
    stream.reset();
    // Refused, reset or not resolvable: the prefill may be starting or restarting; retry.
    pause.expires_after(bounded(backoff));
    co_await pause.async_wait(tuple_awaitable);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
}

void engine::kv_arrived(const request_ptr& r) {
  if (r->ph != phase::waiting_kv) return;
  std::uint64_t need = std::uint64_t(r->input_len()) + r->max_new_tokens;
  if (need > opts_.max_total_tokens) {
    fail(*r, fmt::format("Request {} needs {} KV tokens, more than --max-total-tokens {}", r->rid,
                         need, opts_.max_total_tokens));
    return;
  }
  --waiting_kv_n_;
  ++queued_n_;
  ++kv_received_;
  r->ph = phase::queued;
  queue_.push_back(r);
  work_.notify();
  changed();
}

// ---------------------------------------------------------------------------------------------
// Decode: admission and steps.

void engine::admit() {
  while (!queue_.empty()) {
    auto& r = queue_.front();
    if (r->ph != phase::queued) {
      queue_.pop_front();
      continue;
    }
    if (running_n_ >= static_cast<std::int64_t>(opts_.max_running_requests)) break;
    std::uint64_t need = std::uint64_t(r->input_len()) + r->max_new_tokens;
    if (kv_reserved_ + need > opts_.max_total_tokens) break;  // FIFO: the head waits for room
    --queued_n_;
    ++running_n_;
    kv_reserved_ += need;
    r->kv_reserved = need;
    kv_used_ += r->input_len();
    r->ph = phase::running;
    running_.push_back(r);
    if (r->max_new_tokens == 0) finish(*r, outcome::finished);
    queue_.pop_front();
  }
}

net::awaitable<void> engine::decode_loop() {
  clock::time_point last_emit{};
  bool consecutive = false;  // the previous step ended right before this one started
  for (;;) {
    if (stopped_) co_return;
    admit();
    changed();
    if (running_n_ == 0) {
      running_.clear();
      consecutive = false;
      co_await wait_for(work_);
      continue;
    }
    double sleep_ms = 0;
    if (forward_sleep_s_ > 0) {
      auto t0 = clock::now();
      co_await forward_sleep();
      sleep_ms = ms_between(t0, clock::now());
      consecutive = false;  // a slowed step measures the sleep, not the model
    }
    if (running_n_ == 0) continue;
    // Like SGLang, the line describes the batch about to run, every decode_log_interval steps.
    if (++steps_since_log_ >= std::max(1u, opts_.decode_log_interval)) log_decode(false);
    const double model_ms =
        opts_.step_base_ms + opts_.step_per_req_ms * static_cast<double>(running_n_);
    // Steps are scheduled back to back from the previous one, so time spent writing tokens to
    // clients counts against the step: a simulator that cannot keep up shows longer steps.
    auto start = consecutive ? last_emit : clock::now();
    step_timer_.expires_at(start + from_ms(model_ms));
    co_await step_timer_.async_wait(tuple_awaitable);
    auto emit = clock::now();
    double cpu = process_cpu_ms();
    if (consecutive) {
      total_cpu_ms_ += cpu - last_cpu_ms_;
      double measured = ms_between(last_emit, emit);
      interval_measured_ms_ += measured;
      interval_model_ms_ += model_ms;
      ++interval_measured_steps_;
      total_measured_ms_ += measured;
      total_model_ms_ += model_ms;
      ++total_measured_steps_;
      last_measured_step_ms_ = measured;
      max_step_ratio_ = std::max(max_step_ratio_, measured / model_ms);
    }
    last_cpu_ms_ = cpu;
    last_model_step_ms_ = model_ms + sleep_ms;
    last_emit = emit;
    consecutive = true;

    // One token for every running request.
    for (auto& r : running_) {
      if (r->ph != phase::running) continue;
      std::size_t i = r->generated;
      std::int32_t id = output_token(r->seed, i);
      ++r->generated;
      ++kv_used_;
      ++generated_tokens_;
      ++log_tokens_;
      bool done = r->generated >= r->max_new_tokens;
      if (std::find(r->stop_token_ids.begin(), r->stop_token_ids.end(), id) !=
          r->stop_token_ids.end()) {
        r->stop_matched_id = id;
        done = true;
      } else if (!r->stop_strings.empty()) {
        auto piece = token_text(id);
        for (auto& s : r->stop_strings) {
          if (!s.empty() && piece.find(s) != std::string_view::npos) {
            r->stop_matched = s;
            done = true;
            break;
          }
        }
      }
      if (done) {
        finish(*r, outcome::finished);
      } else {
        notify(*r);
      }
    }
    std::erase_if(running_, [](const request_ptr& r) { return r->ph != phase::running; });
    ++steps_;
    ++interval_steps_;
  }
}

void engine::log_decode(bool) {
  auto now = clock::now();
  double gap = std::chrono::duration<double>(now - last_log_).count();
  last_log_ = now;
  last_gen_throughput_ = gap > 0 ? static_cast<double>(log_tokens_) / gap : 0;
  log_tokens_ = 0;
  steps_since_log_ = 0;
  double usage = opts_.max_total_tokens
                     ? static_cast<double>(kv_used_) / static_cast<double>(opts_.max_total_tokens)
                     : 0;
  spdlog::info(
      "Decode batch. #running-req: {}, #token: {}, token usage: {:.2f}, pre-allocated usage: "
      "0.00, #retracted-req: 0, cuda graph: True, gen throughput (token/s): {:.2f}, "
      "#queue-req: {}, ",
      running_n_, kv_used_, usage, last_gen_throughput_, queued_n_);
  if (interval_measured_steps_ > 0) {
    spdlog::debug("sim step time: model {:.3f} ms, measured {:.3f} ms over {} steps",
                  interval_model_ms_ / interval_measured_steps_,
                  interval_measured_ms_ / interval_measured_steps_, interval_measured_steps_);
  }
  interval_model_ms_ = interval_measured_ms_ = 0;
  interval_measured_steps_ = interval_steps_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Prefill: batches and the bootstrap server.

net::awaitable<void> engine::prefill_loop() {
  for (;;) {
    if (stopped_) co_return;
    while (!queue_.empty() && queue_.front()->ph != phase::queued) queue_.pop_front();
    if (queue_.empty()) {
      co_await wait_for(work_);
      continue;
    }
    // FIFO batch under the token budget; a prompt larger than the budget runs alone.
    std::uint64_t tokens = 0;
    running_.clear();
    while (!queue_.empty()) {
      auto& r = queue_.front();
      if (r->ph != phase::queued) {
        queue_.pop_front();
        continue;
      }
      if (!running_.empty() && tokens + r->input_len() > opts_.max_prefill_tokens) break;
      tokens += r->input_len();
      --queued_n_;
      ++running_n_;
      r->ph = phase::running;
      running_.push_back(r);
      queue_.pop_front();
    }
    auto now = clock::now();
    double gap = std::chrono::duration<double>(now - last_prefill_log_).count();
    last_prefill_log_ = now;
    last_input_throughput_ = gap > 0 ? static_cast<double>(last_prefill_tokens_) / gap : 0;
    last_prefill_tokens_ = tokens;
    ++prefill_batches_;
    spdlog::info(
        "Prefill batch. #new-seq: {}, #new-token: {}, #cached-token: 0, token usage: 0.00, "
        "#running-req: {}, #queue-req: {}, #prealloc-req: 0, #inflight-req: 0, "
        "input throughput (token/s): {:.2f}, ",
        running_.size(), tokens, running_n_, queued_n_, last_input_throughput_);
    changed();

    co_await forward_sleep();
    if (opts_.prefill_tokens_per_s > 0) {
      step_timer_.expires_after(
          from_ms(1000.0 * static_cast<double>(tokens) / opts_.prefill_tokens_per_s));
      co_await step_timer_.async_wait(tuple_awaitable);
    }
    for (auto& r : running_) {
      if (r->ph != phase::running) continue;
      prefill_tokens_ += r->input_len();
      r->generated = 1;  // a prefill worker returns the first output token
      room_done(r->bootstrap_room);
      finish(*r, outcome::finished);
    }
    running_.clear();
    changed();
  }
}

void engine::room_done(std::uint64_t room) {
  auto now = clock::now();
  rooms_done_[room] = now;
  rooms_order_.emplace_back(room, now);
  // Finished rooms are kept for --room-ttl seconds and at most --max-rooms of them, so a decode
  // that arrives late still finds its room while memory stays bounded.
  auto ttl = from_ms(opts_.room_ttl_s * 1000.0);
  while (!rooms_order_.empty() &&
         (rooms_order_.size() > opts_.max_rooms || now - rooms_order_.front().second > ttl)) {
    auto [old_room, t] = rooms_order_.front();
    rooms_order_.pop_front();
    auto it = rooms_done_.find(old_room);
    if (it != rooms_done_.end() && it->second == t) rooms_done_.erase(it);
  }
  if (auto it = room_waiters_.find(room); it != room_waiters_.end()) {
    auto waiters = std::move(it->second);
    room_waiters_.erase(it);
    for (auto* w : waiters) w->notify();
  }
}

bool engine::room_is_done(std::uint64_t room) {
  auto it = rooms_done_.find(room);
  if (it == rooms_done_.end()) return false;
  return clock::now() - it->second <= from_ms(opts_.room_ttl_s * 1000.0);
}

net::awaitable<void> engine::bootstrap_accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await bootstrap_acceptor_->async_accept(tuple_awaitable);
    if (ec) {
      if (ec == net::error::operation_aborted || !bootstrap_acceptor_->is_open()) co_return;
      // Out of descriptors and similar: back off instead of spinning.
      net::steady_timer t(ioc_, std::chrono::milliseconds(50));
      co_await t.async_wait(tuple_awaitable);
      continue;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    net::co_spawn(ioc_, bootstrap_session(std::move(socket)),
                  [](std::exception_ptr e) { log_exception("bootstrap session", e); });
  }
}

net::awaitable<void> engine::bootstrap_session(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  auto ex = stream.get_executor();
  if (stopped_) co_return;
  bootstrap_streams_.push_back(&stream);
  struct unregister_stream {
    std::vector<beast::tcp_stream*>& streams;
    beast::tcp_stream* stream;
    ~unregister_stream() { std::erase(streams, stream); }
  } stream_guard{bootstrap_streams_, &stream};
  std::string buf;
  // A decode gives up after its waiting timeout; the prefill side waits a little longer so it
  // never closes first on a decode that is still within its limit.
  const auto wait_limit = from_ms(opts_.waiting_timeout_s * 1000.0 + 5000.0);
  for (;;) {
    stream.expires_after(wait_limit);
    auto [ec, n] = co_await net::async_read_until(stream, net::dynamic_buffer(buf), '\n',
                                                  tuple_awaitable);
    if (ec) co_return;
    std::string line = buf.substr(0, n - 1);
    buf.erase(0, n);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::uint64_t room = 0;
    bool ok = line.rfind("WAIT ", 0) == 0 && line.size() > 5;
    if (ok) {
      try {
        std::size_t used = 0;
        room = std::stoull(line.substr(5), &used);
        ok = used == line.size() - 5;
      } catch (const std::exception&) {
        ok = false;
      }
    }
    if (!ok) {
      std::string reply = "ERR expected 'WAIT <room>'\n";
      stream.expires_after(std::chrono::seconds(5));
      co_await net::async_write(stream, net::buffer(reply), tuple_awaitable);
      co_return;
    }
    ++bootstrap_requests_;
    changed();
    if (!room_is_done(room)) {
      wake_signal sig(ex);
      sig.timed = true;
      sig.timer.expires_after(wait_limit);
      room_waiters_[room].push_back(&sig);
      struct unregister {
        engine* self;
        std::uint64_t room;
        wake_signal* sig;
        ~unregister() {
          auto it = self->room_waiters_.find(room);
          if (it == self->room_waiters_.end()) return;
          std::erase(it->second, sig);
          if (it->second.empty()) self->room_waiters_.erase(it);
        }
      } guard{this, room, &sig};
      co_await sig.timer.async_wait(tuple_awaitable);
      // Never came (the decode fails on its own timeout), or the worker is shutting down.
      if (!sig.pending || stopped_) co_return;
    }
    std::string reply = "DONE " + std::to_string(room) + "\n";
    stream.expires_after(std::chrono::seconds(5));
    auto [wec, wn] = co_await net::async_write(stream, net::buffer(reply), tuple_awaitable);
    if (wec) co_return;
  }
}

// ---------------------------------------------------------------------------------------------
// Counters.

nlohmann::json engine::stats_json() const {
  nlohmann::json j;
  j["role"] = opts_.role == worker_role::prefill ? "prefill" : "decode";
  j["received"] = received_;
  j["finished"] = finished_;
  j["aborted"] = aborted_;
  j["failed"] = failed_;
  j["rejected"] = rejected_;
  j["faults_injected"] = faults_injected_;
  j["running"] = running_n_;
  j["queued"] = queued_n_;
  j["waiting_kv"] = waiting_kv_n_;
  j["active"] = running_n_ + queued_n_ + waiting_kv_n_;
  j["generated_tokens"] = generated_tokens_;
  j["prefill_tokens"] = prefill_tokens_;
  j["prefill_batches"] = prefill_batches_;
  j["kv_received"] = kv_received_;
  j["bootstrap_requests"] = bootstrap_requests_;
  j["rooms_done"] = rooms_done_.size();
  j["steps"] = steps_;
  j["kv_used_tokens"] = kv_used_;
  j["kv_reserved_tokens"] = kv_reserved_;
  j["max_total_tokens"] = opts_.max_total_tokens;
  j["max_running_requests"] = opts_.max_running_requests;
  j["token_usage"] = opts_.max_total_tokens
                         ? static_cast<double>(kv_used_) / static_cast<double>(opts_.max_total_tokens)
                         : 0.0;
  j["forward_sleep_time"] = forward_sleep_s_;
  j["last_gen_throughput"] = last_gen_throughput_;
  j["last_input_throughput"] = last_input_throughput_;
  // Step timing: the model's step time against the measured time between steps (only steps that
  // ran back to back, without idle time or a /slow_down sleep in between).
  j["model_step_ms"] = last_model_step_ms_;
  j["measured_step_ms"] = last_measured_step_ms_;
  j["measured_steps"] = total_measured_steps_;
  j["avg_model_step_ms"] = total_measured_steps_ ? total_model_ms_ / total_measured_steps_ : 0.0;
  j["avg_measured_step_ms"] =
      total_measured_steps_ ? total_measured_ms_ / total_measured_steps_ : 0.0;
  j["avg_cpu_step_ms"] = total_measured_steps_ ? total_cpu_ms_ / total_measured_steps_ : 0.0;
  j["step_time_ratio"] = total_model_ms_ > 0 ? total_measured_ms_ / total_model_ms_ : 0.0;
  j["max_step_ratio"] = max_step_ratio_;
  return j;
}

nlohmann::json engine::load_json() const {
  return nlohmann::json::array({{{"dp_rank", 0},
                                 {"num_reqs", running_n_ + queued_n_ + waiting_kv_n_},
                                 {"num_waiting_reqs", queued_n_ + waiting_kv_n_},
                                 {"num_tokens", kv_used_}}});
}

namespace {
bool holds(const nlohmann::json& j, const std::vector<stat_condition>& conds) {
  for (auto& c : conds) {
    auto it = j.find(c.field);
    if (it == j.end() || !it->is_number()) return false;
    double v = it->get<double>();
    switch (c.kind) {
      case stat_condition::eq:
        if (v != c.value) return false;
        break;
      case stat_condition::min:
        if (v < c.value) return false;
        break;
      case stat_condition::max:
        if (v > c.value) return false;
        break;
    }
  }
  return true;
}
}  // namespace

bool engine::conditions_hold(const std::vector<stat_condition>& conds) const {
  return holds(stats_json(), conds);
}

void engine::add_waiter(stat_waiter* w) { waiters_.push_back(w); }

void engine::remove_waiter(stat_waiter* w) { std::erase(waiters_, w); }

void engine::changed() {
  if (waiters_.empty()) return;
  auto j = stats_json();
  for (auto* w : waiters_)
    if (holds(j, w->conditions)) w->signal->notify();
}

}  // namespace pdlb::sim
