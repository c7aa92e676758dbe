// Whole requests through pdlb's HTTP session, on an in-memory stream.
//
// Once per process, two fake SGLang PD workers (a prefill and a decode, http_session_fakes.hpp: small
// blocking servers on 127.0.0.1, port 0, in a forked child process) are started, and pdlb's
// load_balancer is put in front of them, twice: one pdlb without API keys, one with (`fuzz-key`, admin
// `fuzz-admin`). pdlb's own http_server never listens and no thread runs its io_context: each input
// gets a socketpair(AF_UNIX), one end handed to http_server::serve_connection, and this thread
// writes the input into the other end while it runs the io_context itself (poll / run_one_for) and
// reads back whatever pdlb writes.
//
// Input: byte 0 is the mode, the rest is what the client sends.
//   bit 0      half-close (shutdown(SHUT_WR)) after the last byte; pdlb takes the EOF as the client
//              leaving, so this drives the cancellation paths. Without it the connection stays open
//              until pdlb is quiescent, then it is closed.
//   bits 1-2   how the bytes are written: 0 all at once, 1 one byte, 2 seven bytes, 3 64 bytes at a
//              time, with pdlb's io_context polled in between (long inputs use larger pieces: at
//              most 512 writes).
//   bit 3      use the pdlb with API keys.
//   bits 4-7   half-close only: how many handlers (0-30, in steps of 2) to run between the last
//              write and the shutdown, so that the client leaves at different points of a request.
// A request body may carry "fuzz_fault": "<prefill|decode>_<kind>" (pdlb forwards it unchanged) to
// make that fake worker misbehave: status, text, drop, garbage, cut, empty, nodone, big, huge.
//
// Findings (each aborts with a message on stderr):
//   - a session still open, or a request still in flight, 10 s after the input began (a hang);
//   - pdlb's bytes are not a sequence of valid HTTP/1.1 responses (100 Continue allowed; the last
//     one may be cut if it is a chunked stream, or if the client left), a response to a HEAD request
//     that has a body, more responses than requests, or bytes after a Connection: close response;
//   - a complete response with status >= 400 and Content-Type application/json whose body is not a
//     JSON object with a string error.message;
//   - a load balancer counter (requests in flight, per-worker in flight) not back to 0 once the
//     session ended, or an upstream connection still open once the idle ones were closed;
//   - anything ASan, UBSan or LeakSanitizer reports.
//
// PDLB_FUZZ_VERBOSE=1 in the environment prints what pdlb answered to every input (to write seeds, or
// to read a finding). Findings are kept in tests/fuzz/regressions (see its README.md).
#include <boost/asio/io_context.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pdlb/config.hpp"
#include "pdlb/http_server.hpp"
#include "pdlb/proxy.hpp"
#include "pdlb/service.hpp"

#include "http_session_fakes.hpp"

namespace {

using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace net = pdlb::net;
namespace http = pdlb::http;

constexpr std::uint32_t header_limit = 8 * 1024;  // pdlb's, small so that 431 is reachable
constexpr std::uint64_t body_limit = 32 * 1024;   // pdlb's, small so that 413 is reachable
constexpr auto hang_deadline = 10s;

// ---------------------------------------------------------------------------------------------
// pdlb under test.

struct pdlb_instance {
  std::unique_ptr<pdlb::load_balancer> lb;
  std::unique_ptr<pdlb::http_server> server;
};

struct harness {
  pdlb_fuzz::fake_urls workers;
  pdlb_instance open;   // no API keys
  pdlb_instance keyed;  // --api-key fuzz-key --admin-api-key fuzz-admin
  std::uint64_t inputs = 0;
  bool verbose = false;  // PDLB_FUZZ_VERBOSE=1: print what pdlb answered to every input
};

// Lives for the whole process; never destroyed, so that nothing runs destructors at exit.
harness* H = nullptr;

pdlb_instance make_pdlb(const harness& h, bool keyed) {
  pdlb::config cfg;
  pdlb::prefill_config p;
  std::string error;
  if (!pdlb::parse_worker_url(h.workers.prefill, p.url, error)) {
    std::fprintf(stderr, "fuzz_http_session: bad prefill URL: %s\n", error.c_str());
    std::abort();
  }
  p.bootstrap_port = 8998;  // nothing connects to it
  cfg.prefill.push_back(p);
  pdlb::worker_url d;
  if (!pdlb::parse_worker_url(h.workers.decode, d, error)) {
    std::fprintf(stderr, "fuzz_http_session: bad decode URL: %s\n", error.c_str());
    std::abort();
  }
  cfg.decode.push_back(d);
  cfg.threads = 1;
  cfg.log_interval = 0;
  cfg.log_level = "off";
  cfg.timeout = 60s;  // longer than the hang deadline: a leg left waiting is reported
  cfg.max_body_size = 1024 * 1024;
  if (keyed) {
    cfg.api_key = "fuzz-key";
    cfg.admin_api_key = "fuzz-admin";
  }

  // pdlb's own wiring (pdlb::service uses the same), with the small limits above. The service
  // itself is not used: it listens and runs its threads, where this target drives one io_context
  // by hand on a socketpair.
  pdlb::server_options so = pdlb::server_options_for(cfg);
  so.header_limit = header_limit;
  so.body_limit = body_limit;

  pdlb_instance out;
  out.lb = std::make_unique<pdlb::load_balancer>(cfg);
  out.server = std::make_unique<pdlb::http_server>(
      so, [lb = out.lb.get()](pdlb::exchange& ex) { return lb->handle(ex); });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Checks.

[[noreturn]] void fail(const std::string& what, std::string_view client_bytes, std::string_view pdlb_bytes) {
  auto show = [](std::string_view s) {
    constexpr std::size_t max = 4096;
    return std::string(s.substr(0, max)) + (s.size() > max ? "\n[... " + std::to_string(s.size()) + " bytes]" : "");
  };
  std::fprintf(stderr, "\nfuzz_http_session: %s\n--- client sent (%zu bytes):\n%s\n--- pdlb answered (%zu bytes):\n%s\n---\n",
               what.c_str(), client_bytes.size(), show(client_bytes).c_str(), pdlb_bytes.size(),
               show(pdlb_bytes).c_str());
  std::abort();
}

// The methods of the requests in `in` whose header is complete, parsed with pdlb's body limit: the
// i-th response answers the i-th request (pdlb answers a malformed request once more, then closes).
// This parser's header limit is 4 times pdlb's: Beast 1.81 applies it to the request line and to the
// fields separately, not to the whole header (a later Beast counts the whole header,
// boostorg/beast#2920), so it is only a guard here. The rule is pdlb's: a header (request line and
// fields together) over `header_limit` bytes gets 431 and the connection is closed. That 431 may
// carry a body even for HEAD (pdlb does not always know the method when it rejects a header), so such
// a request is listed as http::verb::unknown.
std::vector<http::verb> request_methods(std::string_view in) {
  std::vector<http::verb> methods;
  std::size_t pos = 0;
  while (pos < in.size()) {
    http::request_parser<http::string_body> p;
    p.header_limit(4 * header_limit);
    p.body_limit(body_limit);
    pdlb::error_code ec;
    const std::size_t start = pos;
    std::size_t header_bytes = 0;
    while (!p.is_done() && pos < in.size()) {
      std::size_t n = p.put(net::buffer(in.data() + pos, in.size() - pos), ec);
      pos += n;
      if (header_bytes == 0 && p.is_header_done()) header_bytes = pos - start;
      if (ec == http::error::need_more && n > 0) {
        ec = {};
        continue;
      }
      if (ec || n == 0) break;
    }
    if (header_bytes > header_limit) {
      methods.push_back(http::verb::unknown);
      break;
    }
    // A request whose header was read is answered even if its body is bad or cut (413, 400).
    if (p.is_header_done()) methods.push_back(p.get().method());
    if (ec || !p.is_done()) break;
  }
  return methods;
}

bool is_json_content_type(std::string_view ct) {
  constexpr std::string_view want = "application/json";
  return ct.size() >= want.size() && boost::beast::iequals(ct.substr(0, want.size()), want);
}

bool is_error_body(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  auto e = j.find("error");
  if (e == j.end() || !e->is_object()) return false;
  auto m = e->find("message");
  return m != e->end() && m->is_string();
}

// `s` with every byte that is not part of a valid UTF-8 sequence replaced by '?' (to tell an error
// body that is not JSON only because of invalid UTF-8 from one that is not JSON at all).
std::string valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    bool ok = len != 0 && i + len <= s.size();
    for (std::size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (ok && len > 1) {
      // No overlong forms, no surrogates, nothing past U+10FFFF.
      std::uint32_t cp = c & (0x7f >> len);
      for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
      static constexpr std::uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= min_cp[len] && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff);
    }
    if (!ok) {
      out.push_back('?');
      ++i;
      continue;
    }
    out.append(s.substr(i, len));
    i += len;
  }
  return out;
}

// `client_stayed`: the client neither half-closed nor gave up waiting, so only a stream may be cut.
void check_responses(std::string_view in, std::string_view out, bool client_stayed) {
  const auto methods = request_methods(in);
  std::size_t pos = 0;
  std::size_t answered = 0;  // final (non-1xx) responses
  bool closed = false;       // a complete response said Connection: close
  while (pos < out.size()) {
    if (closed) fail("bytes after a response with Connection: close", in, out);
    http::response_parser<http::string_body> p;
    p.header_limit(1 << 20);
    p.body_limit(std::numeric_limits<std::uint64_t>::max());
    p.eager(true);
    const bool head = answered < methods.size() && methods[answered] == http::verb::head;
    if (head) p.skip(true);
    pdlb::error_code ec;
    bool truncated = false;
    for (;;) {
      std::size_t n = p.put(net::buffer(out.data() + pos, out.size() - pos), ec);
      pos += n;
      if (ec == http::error::need_more) {
        ec = {};
        if (n > 0 && pos < out.size()) continue;
        if (pos < out.size()) {
          // The parser needs more than is left (a chunk's CRLF and the next size line are parsed
          // together, say): what is left is the start of an incomplete piece.
          truncated = true;
          break;
        }
      } else if (ec) {
        fail("malformed response: " + ec.message() + " at byte " + std::to_string(pos), in, out);
      }
      if (p.is_done()) break;
      if (n == 0 && pos < out.size()) fail("response parser made no progress", in, out);
      if (pos == out.size()) {
        // The end of pdlb's bytes: completes a body delimited by the connection's end.
        p.put_eof(ec);
        if (ec || !p.is_done()) truncated = true;
        break;
      }
    }
    if (truncated) {
      // The last response may be cut: a stream whose worker failed, or any answer once the client
      // left. A cut header, or a cut body of known length, while the client stayed is a bug.
      if (client_stayed && !(p.is_header_done() && p.chunked()))
        fail("response cut although the client stayed connected", in, out);
      break;
    }
    const auto& res = p.get();
    const unsigned status = res.result_int();
    if (status >= 100 && status < 200) {
      if (status != 100) fail("unexpected interim response " + std::to_string(status), in, out);
      continue;
    }
    ++answered;
    if (answered > methods.size() + 1) fail("more responses than requests", in, out);
    // With skip(true) the parser stopped after the header: what follows must be the next response.
    if (head && pos < out.size() && std::string_view(out).substr(pos, 5) != "HTTP/")
      fail("a response to HEAD carries a body", in, out);
    if (status >= 400 && is_json_content_type(res[http::field::content_type]) && !head) {
      if (!is_error_body(res.body())) {
        const std::string fixed = valid_utf8(res.body());
        if (fixed != res.body() && is_error_body(fixed))
          fail("error response " + std::to_string(status) + " is not valid JSON: invalid UTF-8 in its body", in, out);
        fail("error response " + std::to_string(status) + " without a JSON {\"error\":{\"message\":...}} body", in, out);
      }
    }
    if (!res.keep_alive()) closed = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Driving one connection.

// Reads what pdlb wrote so far; false once pdlb closed its end.
bool drain(int fd, std::string& out) {
  static char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK;
  }
}

// Every worker the load balancer lists, both roles (from the registry's current set).
std::vector<std::shared_ptr<pdlb::worker>> listed_workers(pdlb::load_balancer& lb) {
  const auto set = lb.registry().snapshot();
  std::vector<std::shared_ptr<pdlb::worker>> out;
  for (auto role : {pdlb::worker_role::prefill, pdlb::worker_role::decode})
    out.insert(out.end(), set->of(role).begin(), set->of(role).end());
  return out;
}

std::string state(const pdlb_instance& inst) {
  const auto& lb = *inst.lb;
  std::string s = "connections=" + std::to_string(inst.server->connections()) +
                  " server in_flight=" + std::to_string(inst.server->in_flight()) +
                  " lb in_flight=" + std::to_string(lb.counters().in_flight.load());
  for (const auto& w : listed_workers(*inst.lb))
    s += std::string(" ") + (w->role == pdlb::worker_role::prefill ? "prefill" : "decode") +
         " in_flight=" + std::to_string(w->in_flight.load()) + " open=" + std::to_string(w->host->open_connections());
  return s;
}

void run_one(pdlb_instance& inst, std::uint8_t mode, std::string_view in) {
  const bool half_close = mode & 1;
  static constexpr std::size_t pieces[] = {0, 1, 7, 64};
  std::size_t piece = pieces[(mode >> 1) & 3];
  if (piece == 0) piece = in.size();
  piece = std::max<std::size_t>({piece, in.size() / 512, 1});
  const unsigned handlers_before_shutdown = (mode >> 4) * 2u;

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    std::perror("fuzz_http_session: socketpair");
    std::abort();
  }
  const int client = sv[1];
  ::fcntl(client, F_SETFL, ::fcntl(client, F_GETFL) | O_NONBLOCK);
  inst.server->serve_connection(sv[0]);
  auto& ioc = inst.server->context(0);
  const auto& lb = *inst.lb;

  std::string out;
  bool peer_open = true;
  const auto start = clock_type::now();
  auto check_deadline = [&](const char* phase) {
    if (clock_type::now() - start > hang_deadline)
      fail(std::string("hang: still ") + phase + " after 10 s (" + state(inst) + ")", in, out);
  };

  // 1. Write the input, a piece at a time, running pdlb in between.
  std::size_t off = 0;
  while (off < in.size() && peer_open) {
    ssize_t w = ::send(client, in.data() + off, std::min(piece, in.size() - off), MSG_NOSIGNAL);
    if (w > 0) {
      off += static_cast<std::size_t>(w);
    } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      break;  // pdlb closed the connection (after an error response, say)
    }
    peer_open = drain(client, out);
    if (ioc.poll() == 0 && w <= 0) ioc.run_one_for(1ms);
    peer_open = drain(client, out) && peer_open;
    check_deadline("writing");
  }

  // 2. Half-close mode: let a few handlers run, then tell pdlb the client is done.
  if (half_close) {
    for (unsigned i = 0; i < handlers_before_shutdown; ++i) {
      std::size_t ran = ioc.poll_one();
      if (ran == 0 && lb.counters().in_flight.load() > 0) ran = ioc.run_one_for(1ms);
      if (ran == 0) break;
      peer_open = drain(client, out) && peer_open;
    }
    ::shutdown(client, SHUT_WR);
  }

  // 3. Run until quiescent: nothing ready to run (poll() also checks the sockets), twice in a row,
  //    and no request handler waiting for a worker. Without a handler running, everything pdlb can
  //    react to comes from this thread's socket, whose bytes are readable as soon as send() returns,
  //    so no sleep is needed; a handler waits for the workers, which answer from their process over
  //    loopback. A handler that waits longer than 500 ms is left to the close below, which cancels
  //    it.
  int idle_rounds = 0;
  bool gave_up = false;  // a handler waited too long for the workers
  auto last_activity = clock_type::now();
  for (;;) {
    std::size_t ran = ioc.poll();
    peer_open = drain(client, out) && peer_open;
    const bool busy = lb.counters().in_flight.load() > 0;
    if (ran == 0 && busy) ran = ioc.run_one_for(2ms);
    peer_open = drain(client, out) && peer_open;
    if (ran > 0) {
      idle_rounds = 0;
      last_activity = clock_type::now();
    } else if (!peer_open && inst.server->connections() == 0) {
      break;
    } else if (!busy) {
      if (++idle_rounds >= 2) break;
    } else if (clock_type::now() - last_activity > 500ms) {
      gave_up = true;
      break;
    }
    check_deadline("running before the client closed");
  }

  // 4. The client leaves; everything must wind down.
  ::close(client);
  while (inst.server->connections() != 0 || inst.server->in_flight() != 0 || lb.counters().in_flight.load() != 0) {
    if (ioc.poll() == 0) ioc.run_one_for(1ms);
    check_deadline("open after the client closed");
  }
  // Completions already queued (a cancelled leg's last steps) may still touch the counters.
  while (ioc.poll() != 0) {
  }

  // 5. Counters back to 0.
  for (const auto& w : listed_workers(*inst.lb))
      if (w->in_flight.load() != 0) fail("a worker's in_flight counter leaked (" + state(inst) + ")", in, out);
  if (lb.counters().in_flight.load() != 0) fail("the requests-in-flight counter leaked (" + state(inst) + ")", in, out);

  // Every upstream connection is idle now: closing the idle ones must close them all. Done now and
  // then (and when the pool grew), so that pooled connections are reused most of the time.
  std::size_t open = 0;
  for (const auto& w : listed_workers(*inst.lb)) open += w->host->open_connections();
  if (open > 8 || H->inputs % 64 == 0) {
    inst.server->thread_ctx(0).pools().close_all();
    for (const auto& w : listed_workers(*inst.lb))
        if (w->host->open_connections() != 0)
          fail("an upstream connection is still open after close_idle (" + state(inst) + ")", in, out);
  }

  if (H->verbose) {
    constexpr std::size_t max = 8192;
    std::fprintf(stderr, "--- mode 0x%02x, client sent %zu bytes, pdlb answered %zu bytes:\n%.*s\n", mode,
                 in.size(), out.size(), static_cast<int>(std::min(out.size(), max)), out.data());
    if (out.size() > max)
      std::fprintf(stderr, "[...]\n%s\n", out.substr(std::max(out.size() - max / 2, max)).c_str());
  }

  // 6. What pdlb wrote must be valid HTTP.
  check_responses(in, out, !half_close && !gave_up);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::signal(SIGPIPE, SIG_IGN);
  spdlog::set_level(spdlog::level::off);
  H = new harness;
  const char* verbose = std::getenv("PDLB_FUZZ_VERBOSE");
  H->verbose = verbose && *verbose && std::string_view(verbose) != "0";
  H->workers = pdlb_fuzz::start_fake_workers();  // forks: before any thread exists
  H->open = make_pdlb(*H, false);
  H->keyed = make_pdlb(*H, true);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  ++H->inputs;
  const std::uint8_t mode = data[0];
  run_one(mode & 8 ? H->keyed : H->open, mode,
          std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  return 0;
}
