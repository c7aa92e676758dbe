// One-off calls to workers outside the PD request path: the admin fan-outs (/flush_cache,
// /get_server_info, ...), active health checks and /get_load polls. Each is one upstream_call
// whose whole answer is read into memory.
#pragma once

#include "pdlb/upstream.hpp"
#include "pdlb/worker.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pdlb {

/// A worker's answer to one query.
struct query_result {
  std::string url;    ///< The worker's URL.
  unsigned status = 0;  ///< Its status code; 0 if it did not answer.
  std::string body;     ///< Its whole body.
  std::string error;    ///< Why there is no answer (transport failure, timeout); empty if it answered.
};

/// "<role> worker <url> failed while <phase>: <reason>", for logs and error answers.
std::string describe_failure(const worker& w, const upstream_call& call, const error_code& ec);

/// Largest body a query reads.
inline constexpr std::size_t query_body_limit = 64 * 1024 * 1024;

/// Sends `method path` with `body` to `w` from `ctx`'s thread and reads the whole answer. With
/// `limit`, the query fails as timed out after that long (on top of the worker's own connect and
/// response timeouts, which are --connect-timeout and --timeout).
net::awaitable<query_result> query_worker(worker& w, thread_context& ctx, std::string method, std::string path,
                                          std::string_view body,
                                          std::optional<std::chrono::milliseconds> limit = std::nullopt);

/// Queries every worker of `ws` at once; results in the order of `ws`.
net::awaitable<std::vector<query_result>> query_workers(const std::vector<worker*>& ws, thread_context& ctx,
                                                        std::string method, std::string path,
                                                        std::string_view body,
                                                        std::optional<std::chrono::milliseconds> limit = std::nullopt);

}  // namespace pdlb
