// One prefill/decode request, from the client's body to the client's answer.
//
// The request object alone picks the worker pair, rewrites the body, runs both legs, decides the
// answer and writes it. An attempt runs one pair: both legs at once, each returning a complete,
// typed result; the attempt's verdict (a pure function of the two results) says what the client
// gets. A stream is relayed only once both legs answered 2xx, so an attempt that fails before that
// has sent the client nothing, and running the pair again is one call (pd_request::attempt).
#pragma once

#include "pdlb/http_server.hpp"
#include "pdlb/logprob_merge.hpp"
#include "pdlb/worker.hpp"

#include <array>
#include <memory>
#include <random>
#include <string>
#include <string_view>

namespace pdlb {

class load_balancer;
class worker_call;

/// How one leg (one worker's part of an attempt) ended.
enum class leg_end {
  cancelled,  ///< Cancelled: by the other leg's failure, or because the client left.
  answered,   ///< The worker answered (any status; see leg_result::status).
  failed,     ///< No usable answer: a transport failure, a timeout, a malformed response.
};

/// A leg's result. Default-constructed, it reads as cancelled (what a leg that threw leaves).
struct leg_result {
  leg_result();
  ~leg_result();
  leg_result(leg_result&&) noexcept;
  leg_result& operator=(leg_result&&) noexcept;
  leg_end end = leg_end::cancelled;
  worker* target = nullptr;     ///< The leg's worker (set unless cancelled).
  unsigned status = 0;          ///< The worker's status, when it answered.
  std::string content_type;     ///< The worker's Content-Type, when it answered.
  std::string body;             ///< The worker's whole answer (not when `stream` is set).
  /// A 2xx stream whose body is still to be read: the call (and the worker's in-flight count).
  std::unique_ptr<worker_call> stream;
  /// For failed, or a prefill's error answer: what went wrong, naming the worker (and the phase).
  std::string failure;
  /// For failed, or a prefill's error answer: the status the client gets.
  http::status failure_status = http::status::bad_gateway;
  /// For failed: how, for failure detection.
  failure_kind kind = failure_kind::reset;
  /// For failed: the worker is to blame (not so when pdlb's own connector limit was reached).
  bool worker_fault = false;
  bool ok() const { return end == leg_end::answered && status >= 200 && status < 300; }
};

/// The prefill leg's result: its logprobs, read from its answer when asked for. For a stream without
/// logprobs, `stream` holds the call whose body is read while the decode's is relayed.
struct prefill_result : leg_result {
  prefill_logprobs logprobs;
};

/// The decode leg's result. For a stream answered 2xx, `stream` holds the call whose body is to be
/// relayed; otherwise the whole answer is in `body`.
struct decode_result : leg_result {};

/// What an attempt's two results mean for the client.
enum class attempt_verdict {
  client_gone,     ///< Nothing failed, yet a leg was cancelled: the client left.
  prefill_failed,  ///< The prefill failed or answered an error: the client gets a gateway error.
  decode_failed,   ///< The decode failed: the client gets a gateway error.
  decode_answer,   ///< The client gets the decode's answer (the decode's own error answer too).
};

/// The verdict on an attempt. A prefill failure comes first: it usually causes the decode's.
attempt_verdict judge_attempt(const prefill_result& p, const decode_result& d);

/// What one request did, for metrics and the access log. Owned by the caller of serve_pd_request,
/// which reads it once the request is over.
struct request_record {
  /// Longest client X-Request-Id kept; a longer (or non-printable) one is replaced by a new id.
  static constexpr std::size_t max_id = 128;
  /// Takes the client's X-Request-Id if usable (1..max_id visible ASCII characters), else makes a
  /// random one (32 hex digits) from `rng`.
  void assign_id(std::string_view client_value, std::mt19937_64& rng);
  /// The request's id.
  std::string_view id() const { return {header_.data() + prefix.size(), id_size_}; }
  /// "X-Request-Id: <id>\r\n", for the response and both workers.
  std::string_view id_header() const { return {header_.data(), prefix.size() + id_size_ + 2}; }

  std::shared_ptr<worker> prefill;  ///< The last attempt's prefill worker (null if none was picked).
  std::shared_ptr<worker> decode;   ///< The last attempt's decode worker.
  unsigned retries = 0;             ///< Attempts run again on another pair.
  bool client_gone = false;         ///< The client left before its whole answer.

 private:
  static constexpr std::string_view prefix = "X-Request-Id: ";
  std::array<char, prefix.size() + max_id + 2> header_{};  // in place: no allocation per request
  std::size_t id_size_ = 0;
};

/// Serves a request to /generate (openai false), /v1/completions or /v1/chat/completions.
net::awaitable<void> serve_pd_request(load_balancer& lb, exchange& ex, std::string_view path,
                                      bool openai, request_record& record);

}  // namespace pdlb
