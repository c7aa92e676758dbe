#include "pdlb/upstream.hpp"

#include "pdlb/http_client.hpp"
#include "pdlb/lazy_deadline.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>

#include <sys/socket.h>

#include <unordered_map>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

namespace pdlb {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {
constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);
// The first read of a response (Beast's own first read size): a small answer often fits whole.
constexpr std::size_t header_read_size = 512;

class upstream_category_impl final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "pdlb.upstream"; }
  std::string message(int ev) const override {
    switch (static_cast<upstream_errc>(ev)) {
      case upstream_errc::pool_exhausted: return "no upstream connection became free (connector limit reached)";
      case upstream_errc::response_too_large: return "response body too large";
      case upstream_errc::bad_response: return "malformed HTTP response";
    }
    return "unknown upstream error";
  }
};
}  // namespace

const boost::system::error_category& upstream_category() {
  static upstream_category_impl cat;
  return cat;
}

error_code make_error_code(upstream_errc e) { return {static_cast<int>(e), upstream_category()}; }

namespace {

// Unparsed bytes up to this size (a partial chunk header, the CRLF ending a chunk) are carried
// into the socket scratch for the next read; more than that is read in the connection's own buffer.
constexpr std::size_t small_leftover = 4096;

}  // namespace

// ---------------------------------------------------------------------------------------------
// conn_limiter

struct conn_limiter::waiter {
  waiter(const net::any_io_executor& ex, clock_type::time_point deadline, std::size_t n)
      : timer(ex, deadline), needed(n) {}
  net::steady_timer timer;
  std::size_t needed;      // slots still wanted; guarded by the limiter's mutex
  bool granted = false;    // all of them were handed over; guarded by the limiter's mutex
};

bool conn_limiter::try_acquire(std::size_t n) {
  std::lock_guard lock(mutex_);
  // Nobody jumps the queue: a waiter for two slots must not starve behind single takers.
  if (waiters_.empty() && used_ + n <= limit_) {
    used_ += n;
    return true;
  }
  return false;
}

net::awaitable<error_code> conn_limiter::acquire(clock_type::time_point deadline, std::size_t n) {
  if (try_acquire(n)) co_return error_code{};
  auto w = std::make_shared<waiter>(co_await net::this_coro::executor, deadline, n);
  {
    std::lock_guard lock(mutex_);
    if (waiters_.empty() && used_ + n <= limit_) {
      used_ += n;
      co_return error_code{};
    }
    // Free slots go to this waiter (it is handed more as they are released).
    const std::size_t free_now = std::min(limit_ - std::min(used_, limit_), n);
    used_ += free_now;
    w->needed -= free_now;
    waiters_.push_back(w);
    waiting_.store(waiters_.size(), std::memory_order_relaxed);
  }
  notify_wait();
  // Woken by release() cancelling the timer, by the deadline, or by our own cancellation.
  co_await w->timer.async_wait(tuple_awaitable);
  std::size_t partial = 0;
  {
    std::lock_guard lock(mutex_);
    if (w->granted) co_return error_code{};
    waiters_.remove(w);
    waiting_.store(waiters_.size(), std::memory_order_relaxed);
    partial = n - w->needed;  // slots handed over before we gave up: given back below
  }
  release(partial);
  if (clock_type::now() < deadline) co_return net::error::operation_aborted;  // we were cancelled
  co_return upstream_errc::pool_exhausted;
}

// With the mutex held: one free slot to the longest waiter, which leaves the queue (into `woken`)
// once it has all it asked for.
void conn_limiter::grant_one(std::vector<std::shared_ptr<waiter>>& woken) {
  auto& front = waiters_.front();
  if (--front->needed == 0) {
    front->granted = true;
    woken.push_back(std::move(front));
    waiters_.pop_front();
    waiting_.store(waiters_.size(), std::memory_order_relaxed);
  }
}

// A timer belongs to its waiter's thread: it is cancelled there. The shared_ptr keeps it alive.
void conn_limiter::wake(std::vector<std::shared_ptr<waiter>>& woken) {
  for (auto& w : woken) net::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
}

void conn_limiter::release(std::size_t n) {
  std::vector<std::shared_ptr<waiter>> woken;
  {
    std::lock_guard lock(mutex_);
    // Each slot goes straight to the longest waiter; `used_` drops only when nobody waits, or
    // when more are in use than a lowered limit allows.
    for (; n > 0; --n) {
      if (waiters_.empty() || used_ > limit_)
        --used_;
      else
        grant_one(woken);
    }
  }
  wake(woken);
}

void conn_limiter::set_limit(std::size_t limit) {
  std::vector<std::shared_ptr<waiter>> woken;
  {
    std::lock_guard lock(mutex_);
    limit_ = limit;
    for (; !waiters_.empty() && used_ < limit_; ++used_) grant_one(woken);
  }
  wake(woken);
}

std::size_t conn_limiter::used() const {
  std::lock_guard lock(mutex_);
  return used_;
}

bool conn_limiter::has_waiters() const {
  // Read without the lock (twice per request, as a connection is returned): a waiter that comes
  // just after is served by its on_wait prune, which closes the connection parked meanwhile.
  return waiting_.load(std::memory_order_relaxed) != 0;
}

// ---------------------------------------------------------------------------------------------
// upstream_host

namespace detail {
struct pooled_conn;
}
using detail::pooled_conn;

struct upstream_host::impl {
  worker_url url;
  upstream_options opts;
  conn_limiter host_limit;
  std::shared_ptr<conn_limiter> global_limit;
  std::atomic<std::size_t> open{0};
  std::atomic<std::uint64_t> connects{0};  // connections established, for metrics
  std::atomic<bool> retired{false};
  std::mutex resolve_mutex;
  std::vector<tcp::endpoint> endpoints;  // cached resolution
  // Idle connections in each thread's pool, stored by that thread (a plain store, on a line of its
  // own) each time its list changes, summed by the metrics.
  struct alignas(64) idle_slot {
    std::atomic<std::size_t> n{0};
  };
  std::size_t threads;
  std::unique_ptr<idle_slot[]> idle_by_thread;

  impl(worker_url u, std::size_t per_host, std::shared_ptr<conn_limiter> g, upstream_options o, std::size_t t)
      : url(std::move(u)),
        opts(o),
        host_limit(per_host),
        global_limit(std::move(g)),
        threads(std::max<std::size_t>(t, 1)),
        idle_by_thread(std::make_unique<idle_slot[]>(threads)) {
    // Idle connections hold slots of both limiters: the global one's owner reclaims them.
    host_limit.on_wait([global = global_limit.get()] { global->notify_wait(); });
  }

  void on_closed() {
    open.fetch_sub(1, std::memory_order_relaxed);
    host_limit.release();
    global_limit->release();
  }
};

namespace detail {

struct pooled_conn {
  pooled_conn(const net::any_io_executor& ex, std::shared_ptr<upstream_host::impl> h)
      : stream(ex), deadline(ex, stream.socket()), host(std::move(h)) {
    host->open.fetch_add(1, std::memory_order_relaxed);
  }
  ~pooled_conn() {
    error_code ignored;
    stream.socket().close(ignored);
    host->on_closed();
  }
  beast::tcp_stream stream;
  lazy_deadline deadline;  // the response timeout of each wait for the worker
  beast::flat_buffer buffer;
  bool drained = false;  // the last body read left the socket empty (see read_some)
  bool connected = false;  // false until connected, and again after a stale keep-alive was closed
  clock_type::time_point idle_since;
  std::shared_ptr<upstream_host::impl> host;  // its slots are freed when the connection closes
};

}  // namespace detail

namespace {

// True if a pooled connection still looks usable: no EOF, no stray bytes, no error pending.
bool looks_alive(pooled_conn& c) {
  if (c.buffer.size() != 0) return false;
  char byte;
  ssize_t n = ::recv(c.stream.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

upstream_host::upstream_host(worker_url url, std::size_t per_host_limit,
                             std::shared_ptr<conn_limiter> global_limit, upstream_options opts,
                             std::size_t threads)
    : impl_(std::make_shared<impl>(std::move(url), per_host_limit, std::move(global_limit), opts, threads)) {}

upstream_host::~upstream_host() { retire(); }

const worker_url& upstream_host::url() const { return impl_->url; }

std::size_t upstream_host::open_connections() const { return impl_->open.load(); }

std::uint64_t upstream_host::connects() const { return impl_->connects.load(std::memory_order_relaxed); }

std::size_t upstream_host::idle_connections() const {
  std::size_t n = 0;
  for (std::size_t i = 0; i < impl_->threads; ++i) n += impl_->idle_by_thread[i].n.load(std::memory_order_relaxed);
  return n;
}

void upstream_host::retire() { impl_->retired.store(true, std::memory_order_relaxed); }

void upstream_host::reconfigure(const upstream_options& opts, std::size_t per_host_limit) {
  impl_->opts = opts;
  impl_->host_limit.set_limit(per_host_limit);
}

// ---------------------------------------------------------------------------------------------
// upstream_pools

struct upstream_pools::impl {
  // Per worker, in the order connections were returned: the oldest at the front.
  std::unordered_map<const upstream_host::impl*, std::vector<std::unique_ptr<pooled_conn>>> idle;
  std::size_t thread;  // the owner thread's index

  // Tells `host` how many idle connections to it this thread holds, after its list changed. A
  // non-empty list keeps `host` alive (its connections share it).
  void publish(const upstream_host::impl& host, std::size_t n) const {
    if (thread < host.threads) host.idle_by_thread[thread].n.store(n, std::memory_order_relaxed);
  }
};

upstream_pools::upstream_pools(std::size_t thread) : impl_(std::make_unique<impl>()) { impl_->thread = thread; }

upstream_pools::~upstream_pools() { close_all(); }

void upstream_pools::close_all() {
  for (auto& [host, list] : impl_->idle)
    if (!list.empty()) impl_->publish(*host, 0);
  impl_->idle.clear();
}

void upstream_pools::prune() {
  auto now = clock_type::now();
  for (auto it = impl_->idle.begin(); it != impl_->idle.end();) {
    auto& list = it->second;
    // An empty list is dropped with its key before anything else: the key may name a worker that
    // is gone (only connections keep a worker's host alive).
    if (list.empty()) {
      it = impl_->idle.erase(it);
      continue;
    }
    const upstream_host::impl& host = *it->first;
    // What stays: none if the worker left, or if somebody waits for a slot (a connection parked
    // before the wait began holds one the waiter needs); else the connections idle for less than
    // the idle timeout.
    auto first_kept = list.end();
    if (!host.retired.load(std::memory_order_relaxed) && !host.host_limit.has_waiters() &&
        !host.global_limit->has_waiters())
      first_kept = std::find_if(list.begin(), list.end(),
                                [&](const auto& c) { return now - c->idle_since < host.opts.idle_timeout; });
    // Told before the connections go: the last of them may hold the last reference to `host`.
    impl_->publish(host, static_cast<std::size_t>(list.end() - first_kept));
    list.erase(list.begin(), first_kept);
    it = list.empty() ? impl_->idle.erase(it) : std::next(it);
  }
}

std::size_t upstream_pools::idle_count() const {
  std::size_t n = 0;
  for (const auto& [host, list] : impl_->idle) n += list.size();
  return n;
}

// ---------------------------------------------------------------------------------------------
// upstream_call

namespace {

// What pdlb keeps of a worker's answer: the status, the Content-Type, and the body, written straight
// into the caller's buffer (like buffer_body). Beast's response_parser stores every header field in
// an allocated list, which showed up in callgrind as a few percent of a small request's cost for
// fields nobody reads.
struct worker_answer {
  unsigned status = 0;
  std::string content_type;
  char* data = nullptr;  // where body bytes go next; the reader stops with need_buffer when full
  std::size_t room = 0;

  void on_status(unsigned code) { status = code; }
  void on_field(http::field name, std::string_view, std::string_view value) {
    if (name == http::field::content_type) content_type.assign(value);
  }
  std::size_t on_body(std::string_view body) {
    const std::size_t n = std::min(room, body.size());
    if (n) std::memcpy(data, body.data(), n);
    data += n;
    room -= n;
    return n;
  }
};
using worker_answer_reader = http1::response_reader<worker_answer>;

}  // namespace

struct upstream_call::impl {
  std::shared_ptr<upstream_host::impl> host_ref;  // shared with the connections it opens
  upstream_host::impl& host;
  thread_context& ctx;
  std::unique_ptr<pooled_conn> conn;
  bool own_slots = false;  // slots taken for a connection not made yet (see reserve)
  std::optional<worker_answer_reader> parser;
  bool body_done = false;
  unsigned status = 0;  // kept after release(), like content_type
  std::string content_type;

  impl(std::shared_ptr<upstream_host::impl> h, thread_context& c)
      : host_ref(std::move(h)), host(*host_ref), ctx(c) {}
  ~impl() { unreserve(); }

  // The response timeout around one wait (see lazy_deadline).
  void arm_deadline() { conn->deadline.begin(host.opts.response_timeout); }
  // Ends the wait; true if the timeout cut it short.
  bool disarm_deadline() { return conn->deadline.end(); }

  // Waits until the connection has bytes to read (or EOF), at most the response timeout.
  net::awaitable<error_code> wait_readable() {
    arm_deadline();
    auto [ec] = co_await conn->stream.socket().async_wait(tcp::socket::wait_read, tuple_awaitable);
    if (disarm_deadline()) co_return beast::error::timeout;
    co_return ec;
  }

  // Sends a request: written at once when it fits the socket buffer (the usual case: no timer, no
  // suspension), the rest asynchronously within the response timeout.
  template <class Buffers>
  net::awaitable<error_code> send(const Buffers& bufs) {
    auto& socket = conn->stream.socket();  // non-blocking (see connect)
    const std::size_t total = net::buffer_size(bufs);
    error_code ec;
    std::size_t sent = socket.write_some(bufs, ec);
    if (ec == net::error::would_block || ec == net::error::try_again) {
      ec = {};
      sent = 0;
    }
    if (ec || sent == total) co_return ec;
    beast::buffers_suffix<Buffers> rest(bufs);
    rest.consume(sent);
    arm_deadline();
    auto [wec, n] = co_await net::async_write(socket, rest, tuple_awaitable);
    if (disarm_deadline()) co_return beast::error::timeout;
    co_return wec;
  }

  // Reads until the response header is parsed; body bytes that came with it (often the whole of a
  // small answer) stay in the connection's buffer for read_some(). Errors are Beast's, as
  // http::async_read_header would give them: end_of_stream if the connection closed before any
  // byte came, partial_message if it closed within the header.
  // The header limit counts the whole header. Beast 1.81 checks the status line and the fields
  // separately (a request header of up to twice the limit got through that way, see run_session); with
  // the 512-byte reads here it happens to reject these too, so this is a guard, not a fix.
  net::awaitable<error_code> read_header() {
    auto& c = *conn;
    auto& p = *parser;
    std::size_t header_bytes = 0;
    for (;;) {
      if (c.buffer.size() > 0) {
        error_code ec;
        std::size_t used = p.put(c.buffer.data(), ec);
        c.buffer.consume(used);
        header_bytes += used;
        if (header_bytes > host.opts.header_limit) co_return http::error::header_limit;
        if (p.is_header_done()) co_return error_code{};
        if (ec && ec != http::error::need_more) co_return ec;
      }
      arm_deadline();
      auto [ec, n] = co_await c.stream.socket().async_read_some(c.buffer.prepare(header_read_size),
                                                                tuple_awaitable);
      const bool expired = disarm_deadline();
      c.buffer.commit(n);
      if (expired) co_return beast::error::timeout;
      if (ec == net::error::eof)
        co_return p.got_some() || c.buffer.size() > 0 ? http::error::partial_message
                                                      : http::error::end_of_stream;
      if (ec) co_return ec;
    }
  }

  // Ends the call after a failure: the connection is closed, nothing is handed out.
  error_code fail(body_piece& out, error_code ec) {
    conn.reset();
    out = body_piece{};
    return ec;
  }

  // Parses [data, data + len) into the thread's body scratch, lent to `out` from the first byte;
  // returns the bytes used. Stops when the scratch is full, the parser needs more bytes, or the
  // body ended.
  std::size_t parse_body(body_piece& out, const char* data, std::size_t len, error_code& ec) {
    auto& p = *parser;
    const std::size_t cap = ctx.body_scratch().size();
    std::size_t used_total = 0;
    auto& answer = p.receiver();
    while (used_total < len && out.size < cap && !p.is_done()) {
      if (!out.lease) out.lease = ctx.body_scratch().take();
      answer.data = out.lease.data() + out.size;
      answer.room = cap - out.size;
      std::size_t used = p.put(net::buffer(data + used_total, len - used_total), ec);
      used_total += used;
      out.size = cap - answer.room;
      if (ec == http::error::need_buffer || ec == http::error::need_more) {
        ec = {};
        break;
      }
      if (ec || used == 0) break;
    }
    return used_total;
  }

  // One read from the socket, parsed into `out`: what the socket has at once, else (the usual case
  // for a stream between events) a wait by reading. An error is returned as it is (eof included)
  // for read_some to judge; bad_response if the bytes do not parse.
  net::awaitable<error_code> read_socket(body_piece& out) {
    auto& c = *conn;
    const std::size_t keep = c.buffer.size();
    if (keep > small_leftover) {
      // A large unparsed tail (the body scratch filled up): read behind it in place.
      error_code rec;
      c.buffer.commit(c.stream.socket().read_some(c.buffer.prepare(65536), rec));
      if (rec != net::error::would_block && rec != net::error::try_again) co_return rec;
      c.buffer.shrink_to_fit();
      co_return co_await wait_readable();
    }
    auto raw = ctx.socket_scratch().take();
    std::size_t got = 0;
    error_code rec = net::error::would_block;
    if (!c.drained) {  // the last read emptied the socket: do not try again
      got = c.stream.socket().read_some(net::buffer(raw.data() + keep, raw.size() - keep), rec);
      c.drained = !rec && got < raw.size() - keep;
    }
    if (rec == net::error::would_block || rec == net::error::try_again) {
      // Wait by reading: the next bytes land in `inbox`, in this coroutine's frame, so one system
      // call both waits and reads and epoll is not re-armed (a streamed event costs one recv).
      raw.reset();  // other streams of this thread use the scratch meanwhile
      c.buffer.shrink_to_fit();  // keep only the unparsed bytes (often none) while waiting
      char inbox[1024];
      arm_deadline();
      auto [wec, m] = co_await c.stream.socket().async_read_some(net::buffer(inbox), tuple_awaitable);
      if (disarm_deadline()) co_return beast::error::timeout;
      if (wec) co_return wec;
      raw = ctx.socket_scratch().take();
      std::memcpy(raw.data() + keep, inbox, m);
      got = m;
      c.drained = m < sizeof inbox;
      if (m == sizeof inbox) {
        // A larger piece (an event longer than the inbox): take the rest now, so that the caller
        // gets whole events rather than a first kilobyte.
        error_code more_ec;
        const std::size_t room = raw.size() - keep - m;
        const std::size_t more = c.stream.socket().read_some(net::buffer(raw.data() + keep + m, room), more_ec);
        if (!more_ec) got += more;
        c.drained = more_ec == net::error::would_block || (!more_ec && more < room);
      }
    } else if (rec) {
      co_return rec;
    }
    // The kept bytes go first, then the new ones; what does not parse yet is kept again.
    if (keep) std::memcpy(raw.data(), c.buffer.data().data(), keep);
    error_code ec;
    const std::size_t used = parse_body(out, raw.data(), keep + got, ec);
    if (ec) co_return upstream_errc::bad_response;
    c.buffer.clear();
    if (used < keep + got) {
      const std::size_t rest = keep + got - used;
      net::buffer_copy(c.buffer.prepare(rest), net::buffer(raw.data() + used, rest));
      c.buffer.commit(rest);
    }
    co_return error_code{};
  }

  std::unique_ptr<pooled_conn> take_idle() {
    auto& pools = ctx.pools().impl_->idle;
    auto found = pools.find(&host);
    if (found == pools.end()) return nullptr;
    auto& list = found->second;
    if (list.empty()) return nullptr;
    auto now = clock_type::now();
    auto& pools_impl = *ctx.pools().impl_;
    while (!list.empty()) {
      std::unique_ptr<pooled_conn> c = std::move(list.back());
      list.pop_back();
      pools_impl.publish(host, list.size());
      // A connection used moments ago is taken as it is (the peek costs a system call per
      // request under load); if the worker closed it anyway, start() retries on a fresh one.
      auto idle_for = now - c->idle_since;
      if (idle_for < host.opts.idle_timeout &&
          (idle_for < std::chrono::seconds(1) ? c->buffer.size() == 0 : looks_alive(*c)))
        return c;
      // Dropping it closes the socket and frees its slots.
    }
    return nullptr;
  }

  net::awaitable<error_code> resolve(std::vector<tcp::endpoint>& out) {
    {
      std::lock_guard lock(host.resolve_mutex);
      out = host.endpoints;
    }
    if (!out.empty()) co_return error_code{};
    tcp::resolver resolver(co_await net::this_coro::executor);
    auto [ec, results] = co_await resolver.async_resolve(
        host.url.host, std::to_string(host.url.port), tcp::resolver::numeric_service, tuple_awaitable);
    if (ec) co_return ec;
    for (const auto& r : results) out.push_back(r.endpoint());
    std::lock_guard lock(host.resolve_mutex);
    host.endpoints = out;
    co_return error_code{};
  }

  // A connection to use, without waiting: an idle one, or the slots for a new one.
  bool try_reserve() {
    if (conn || own_slots) return true;
    conn = take_idle();
    if (conn) return true;
    if (!host.host_limit.try_acquire()) return false;
    if (!host.global_limit->try_acquire()) {
      host.host_limit.release();
      return false;
    }
    own_slots = true;
    return true;
  }

  // Gives back what try_reserve() took (an idle connection is closed: its slots may be awaited).
  void unreserve() {
    conn.reset();
    if (own_slots) {
      host.host_limit.release();
      host.global_limit->release();
      own_slots = false;
    }
  }

  // Slots for a new connection when try_reserve() found none: waits for the worker's, then a global
  // one (the order of reserve_pair too).
  net::awaitable<error_code> wait_for_slots(phase& where) {
    where = phase::acquire;
    auto deadline = clock_type::now() + host.opts.response_timeout;
    if (auto ec = co_await host.host_limit.acquire(deadline)) co_return ec;
    if (auto ec = co_await host.global_limit->acquire(deadline)) {
      host.host_limit.release();
      co_return ec;
    }
    own_slots = true;
    co_return error_code{};
  }

  // True if the reserved connection is ready to send on (a connected idle one).
  bool ready() const { return conn && conn->connected; }

  // Connects the reserved connection: made on the slots held, or made anew on those of a stale
  // keep-alive (no slot is given up and waited for again between the two).
  net::awaitable<error_code> open(phase& where) {
    if (!conn) {
      // From here the slots belong to the connection object and are freed with it.
      conn = std::make_unique<pooled_conn>(co_await net::this_coro::executor, host_ref);
      own_slots = false;
    }
    where = phase::connect;
    std::vector<tcp::endpoint> endpoints;
    if (auto ec = co_await resolve(endpoints)) co_return ec;
    conn->stream.expires_after(host.opts.connect_timeout);
    auto [ec, ep] = co_await conn->stream.async_connect(endpoints, tuple_awaitable);
    if (ec) {
      // Forget the cached address: the worker may have moved.
      std::lock_guard lock(host.resolve_mutex);
      host.endpoints.clear();
      co_return ec;
    }
    conn->connected = true;
    host.connects.fetch_add(1, std::memory_order_relaxed);  // beside `open`'s, once per connection
    error_code ignored;
    conn->stream.socket().set_option(tcp::no_delay(true), ignored);
    // Body reads are non-blocking calls after a readiness wait (see read_some).
    conn->stream.socket().non_blocking(true, ignored);
    co_return error_code{};
  }

  // A pooled connection the worker closed while it was idle: the same slots, a new socket.
  void forget_stale() {
    error_code ignored;
    conn->stream.socket().close(ignored);
    conn->buffer.clear();
    conn->drained = false;
    conn->connected = false;
  }
};

namespace {

// One slot of each limiter (two of one named twice), taken in address order: whoever takes several
// takes them in one order, so nobody holds a slot while waiting for one that a waiter for theirs holds.
net::awaitable<error_code> acquire_both(conn_limiter* a, conn_limiter* b, clock_type::time_point deadline) {
  if (a == b) co_return co_await a->acquire(deadline, 2);
  if (b < a) std::swap(a, b);
  if (auto ec = co_await a->acquire(deadline)) co_return ec;
  if (auto ec = co_await b->acquire(deadline)) {
    a->release();
    co_return ec;
  }
  co_return error_code{};
}

}  // namespace

bool upstream_call::try_reserve_pair(upstream_call& first, upstream_call& second) {
  return first.impl_->try_reserve() && second.impl_->try_reserve();
}

net::awaitable<error_code> upstream_call::reserve_pair(upstream_call& first, upstream_call& second) {
  auto& x = *first.impl_;
  auto& y = *second.impl_;
  if (x.try_reserve() && y.try_reserve()) co_return error_code{};
  // Some slot must be waited for. Nothing is held meanwhile but the slots taken in the one order of
  // every waiter (the workers' in address order, then the global ones together): two requests that
  // each held one connection and waited for a second could otherwise wait for each other until the
  // timeout, and a prefill holding a slot cannot finish before its decode has connected.
  x.unreserve();
  y.unreserve();
  first.phase_ = second.phase_ = phase::acquire;
  const auto deadline = clock_type::now() + x.host.opts.response_timeout;
  if (auto ec = co_await acquire_both(&x.host.host_limit, &y.host.host_limit, deadline)) co_return ec;
  if (auto ec = co_await acquire_both(x.host.global_limit.get(), y.host.global_limit.get(), deadline)) {
    x.host.host_limit.release();
    y.host.host_limit.release();
    co_return ec;
  }
  x.own_slots = y.own_slots = true;
  co_return error_code{};
}

upstream_call::upstream_call(upstream_host& host, thread_context& ctx)
    : impl_(std::make_unique<impl>(host.impl_, ctx)) {}

upstream_call::~upstream_call() = default;

std::string_view upstream_call::phase_name(phase p) {
  switch (p) {
    case phase::idle: return "before start";
    case phase::acquire: return "waiting for a connection slot";
    case phase::connect: return "connecting";
    case phase::send: return "sending the request";
    case phase::header: return "waiting for the response";
    case phase::body: return "reading the response";
    case phase::done: return "done";
  }
  return "?";
}

net::awaitable<error_code> upstream_call::start(std::string_view method, std::string_view path,
                                                std::string_view body, std::string_view extra_headers) {
  auto& h = impl_->host;
  std::string head;
  const bool has_body = method != "GET" || !body.empty();
  http1::append_request_head(head, {.method = method,
                                    .target_prefix = h.url.path_prefix,
                                    .target = path,
                                    .host = h.url.host_header,
                                    .fields = "Accept: */*\r\n",
                                    .extra_fields = extra_headers,
                                    .content_type = has_body ? "application/json" : "",
                                    .content_length = has_body ? std::optional(body.size()) : std::nullopt});

  // Only a wait for a slot or a new connection suspends here (each is a coroutine frame).
  if (!impl_->try_reserve()) {
    if (auto ec = co_await impl_->wait_for_slots(phase_)) co_return ec;
  }
  for (int attempt = 0;; ++attempt) {
    const bool reused = impl_->ready();
    if (!reused) {
      if (auto ec = co_await impl_->open(phase_)) {
        impl_->unreserve();
        co_return ec;
      }
    }
    auto& c = *impl_->conn;
    phase_ = phase::send;
    std::array<net::const_buffer, 2> bufs{net::buffer(head), net::buffer(body.data(), body.size())};
    if (auto wec = co_await impl_->send(bufs)) {
      if (reused && attempt == 0 && wec != beast::error::timeout && wec != net::error::operation_aborted) {
        impl_->forget_stale();  // the worker closed this idle connection: try a fresh one
        continue;
      }
      impl_->unreserve();
      co_return wec;
    }
    phase_ = phase::header;
    impl_->parser.emplace();
    impl_->parser->header_limit(h.opts.header_limit);
    impl_->parser->body_limit(boost::none);
    if (auto rec = co_await impl_->read_header()) {
      bool nothing_came = !impl_->parser->got_some() && c.buffer.size() == 0;
      impl_->parser.reset();
      if (reused && attempt == 0 && nothing_came && http1::closed_by_peer(rec)) {
        impl_->forget_stale();  // closed while idle, before our request was read
        continue;
      }
      impl_->unreserve();
      if (rec.category() == http::make_error_code(http::error::bad_target).category() &&
          rec != http::error::end_of_stream && rec != http::error::partial_message)
        co_return upstream_errc::bad_response;
      co_return rec;
    }
    phase_ = phase::body;
    impl_->body_done = impl_->parser->is_done();
    impl_->status = impl_->parser->receiver().status;
    impl_->content_type = std::move(impl_->parser->receiver().content_type);
    co_return error_code{};
  }
}

unsigned upstream_call::status() const { return impl_->status; }

std::string_view upstream_call::content_type() const { return impl_->content_type; }

// Body bytes are read without holding a buffer while the worker is silent: what the socket has is
// read in one non-blocking call into the thread's socket scratch (up to 64 KB); when it has nothing
// (or the last read emptied it), the wait is an async read into a 1 KB array in this coroutine's
// frame. The bytes are parsed into the thread's body scratch at once, and only the few unparsed ones
// (the CRLF that ends a chunk is parsed with the next chunk's header) stay in the connection's
// buffer, shrunk to fit. An SSE stream that trickles one event at a time then holds a few bytes per
// stream instead of a 64 KB read buffer, and a burst is read 64 KB at a time instead of Beast's 512
// bytes.
net::awaitable<error_code> upstream_call::read_some(body_piece& out) {
  out = body_piece{};
  out.done = impl_->body_done;
  if (out.done) co_return error_code{};
  if (!impl_->conn || !impl_->parser) co_return net::error::not_connected;
  auto& i = *impl_;
  for (;;) {
    // Bytes kept from before (the rest of a header read, or an unparsed tail) come first.
    auto& buffer = i.conn->buffer;
    if (buffer.size() > 0 && out.size < i.ctx.body_scratch().size()) {
      error_code ec;
      auto d = buffer.data();
      buffer.consume(i.parse_body(out, static_cast<const char*>(d.data()), d.size(), ec));
      if (ec) co_return i.fail(out, upstream_errc::bad_response);
    }
    if (i.parser->is_done()) {
      i.body_done = out.done = true;
      phase_ = phase::done;
      co_return error_code{};
    }
    if (out.size > 0) co_return error_code{};
    out.lease.reset();  // nothing in it, and the read below may suspend
    const error_code rec = co_await i.read_socket(out);
    if (!rec) continue;
    if (rec == net::error::eof) {
      // A body delimited by the end of the connection ends here; any other body was cut short.
      error_code ec;
      i.parser->put_eof(ec);
      if (!ec && i.parser->is_done()) {
        i.body_done = out.done = true;
        phase_ = phase::done;
        i.conn.reset();
        co_return error_code{};
      }
      co_return i.fail(out, http::error::partial_message);
    }
    co_return i.fail(out, rec);
  }
}

net::awaitable<error_code> upstream_call::read_all(std::string& out, std::size_t limit) {
  if (impl_->parser) {
    if (auto len = impl_->parser->content_length(); len && *len <= limit) out.reserve(out.size() + *len);
  }
  for (;;) {
    body_piece piece;
    if (auto ec = co_await read_some(piece)) co_return ec;
    if (out.size() + piece.size > limit) {
      abort();
      co_return upstream_errc::response_too_large;
    }
    out.append(piece.bytes());
    if (piece.done) co_return error_code{};
  }
}

void upstream_call::release() {
  auto& i = *impl_;
  if (i.conn && i.parser && i.body_done && i.parser->keep_alive() && i.conn->buffer.size() == 0) {
    i.conn->idle_since = clock_type::now();
    i.conn->stream.expires_never();  // idle: liveness is checked when it is taken again
    // Somebody waits for a slot: free ours instead of parking an idle connection.
    if (i.host.host_limit.has_waiters() || i.host.global_limit->has_waiters()) {
      i.conn.reset();
    } else {
      auto& pools = *i.ctx.pools().impl_;
      auto& list = pools.idle[&i.host];
      list.push_back(std::move(i.conn));
      pools.publish(i.host, list.size());
    }
  }
  i.unreserve();
  i.parser.reset();
}

void upstream_call::abort() {
  impl_->unreserve();
  impl_->parser.reset();
}

}  // namespace pdlb
