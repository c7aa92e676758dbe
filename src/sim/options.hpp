// Options of pdlb-sim and of its fault injection.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pdlb::sim {

enum class worker_role { prefill, decode };

/// Injected faults, set by flags at start and by POST /sim/fault at run time. They apply to the
/// generate routes (/generate, /v1/completions, /v1/chat/completions) only.
struct fault_config {
  unsigned fail_status = 0;              ///< Answer with this status and a JSON error (0: off).
  bool drop_connection = false;          ///< Close the connection without answering.
  bool stall = false;                    ///< Never answer, until the client leaves.
  std::uint32_t latency_ms = 0;          ///< Delay before handling.
  std::optional<std::uint32_t> die_after_tokens;  ///< Streams: cut the connection after N tokens.
  bool refuse_connections = false;       ///< Listening socket closed: connects are refused.
  std::optional<std::uint64_t> count;    ///< Only the next N generate requests are affected.

  /// True if any per-request fault is set.
  bool any_request_fault() const {
    return fail_status != 0 || drop_connection || stall || latency_ms != 0 ||
           die_after_tokens.has_value();
  }
};

struct sim_options {
  worker_role role = worker_role::decode;
  std::string host = "127.0.0.1";
  std::uint16_t port = 30000;
  std::uint16_t bootstrap_port = 8998;  ///< Prefill only.
  unsigned threads = 1;
  std::string model_path = "pdlb-sim/sim-model";
  std::uint32_t context_length = 131072;

  double prefill_tokens_per_s = 100000;     ///< 0: prefill takes no time.
  std::uint32_t max_prefill_tokens = 16384;  ///< Token budget of one prefill batch.

  std::uint32_t max_running_requests = 4096;
  std::uint64_t max_total_tokens = 50'000'000;  ///< KV capacity of the decode worker.
  double step_base_ms = 10.0;
  double step_per_req_ms = 0.03;  // 2000 running: 70 ms, what one core can serve (docs)

  unsigned chars_per_token = 4;
  std::uint32_t default_max_new_tokens = 16;
  double waiting_timeout_s = 300;       ///< Like SGLANG_DISAGGREGATION_WAITING_TIMEOUT.
  unsigned decode_log_interval = 40;    ///< Like SGLang's --decode-log-interval.
  double room_ttl_s = 600;              ///< How long a prefill keeps finished rooms.
  std::uint64_t max_rooms = 1'000'000;  ///< Bound on finished rooms kept.
  /// Put each streamed event's write time (steady_clock ns) into it as sim_write_ns, so a client
  /// on the same host can measure the event's one-way latency. Not SGLang's format: off by default.
  bool stamp_events = false;

  fault_config faults;
};

}  // namespace pdlb::sim
