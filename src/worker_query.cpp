#include "pdlb/worker_query.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>


namespace pdlb {

namespace beast = boost::beast;

std::string describe_failure(const worker& w, const upstream_call& call, const error_code& ec) {
  std::string msg(w.prefill ? "prefill" : "decode");
  msg += " worker ";
  msg += w.url();
  msg += " failed while ";
  msg += upstream_call::phase_name(call.where());
  msg += ": ";
  msg += ec == beast::error::timeout ? std::string("timed out") : ec.message();
  return msg;
}

namespace {

net::awaitable<query_result> query_once(worker& w, thread_context& ctx, std::string method, std::string path,
                                        std::string_view body) {
  query_result r;
  r.url = w.url();
  upstream_call call(*w.host, ctx);
  if (auto ec = co_await call.start(method, path, body)) {
    r.error = describe_failure(w, call, ec);
    co_return r;
  }
  if (auto ec = co_await call.read_all(r.body, query_body_limit)) {
    r.error = describe_failure(w, call, ec);
    co_return r;
  }
  r.status = call.status();
  call.release();
  co_return r;
}

}  // namespace

net::awaitable<query_result> query_worker(worker& w, thread_context& ctx, std::string method, std::string path,
                                          std::string_view body, std::optional<std::chrono::milliseconds> limit) {
  if (!limit) co_return co_await query_once(w, ctx, std::move(method), std::move(path), body);
  // Whichever ends first cancels the other, as pd_request's legs do: a query still running when
  // the timer fires is cancelled, which closes its connection (the worker sees the close).
  auto ex = co_await net::this_coro::executor;
  net::steady_timer timer(ex, *limit);
  auto [order, qe, qr, tec] =
      co_await net::experimental::make_parallel_group(
          net::co_spawn(ex, query_once(w, ctx, std::move(method), std::move(path), body), net::deferred),
          timer.async_wait(net::deferred))
          .async_wait([](auto&&...) { return net::cancellation_type::terminal; }, net::use_awaitable);
  if (qe) std::rethrow_exception(qe);  // cancelled from outside
  if (order[0] == 0) co_return std::move(qr);
  query_result r;
  r.url = w.url();
  r.error = std::string(w.prefill ? "prefill" : "decode") + " worker " + w.url() + " did not answer within " +
            std::to_string(limit->count()) + " ms";
  co_return r;
}

net::awaitable<std::vector<query_result>> query_workers(const std::vector<worker*>& ws, thread_context& ctx,
                                                        std::string method, std::string path,
                                                        std::string_view body,
                                                        std::optional<std::chrono::milliseconds> limit) {
  if (ws.empty()) co_return std::vector<query_result>{};
  auto ex = co_await net::this_coro::executor;
  using op_type = decltype(net::co_spawn(ex, query_worker(*ws[0], ctx, method, path, body, limit), net::deferred));
  std::vector<op_type> ops;
  ops.reserve(ws.size());
  for (worker* w : ws) ops.push_back(net::co_spawn(ex, query_worker(*w, ctx, method, path, body, limit), net::deferred));
  auto [order, errors, results] = co_await net::experimental::make_parallel_group(std::move(ops))
                                      .async_wait(net::experimental::wait_for_all(), net::use_awaitable);
  for (auto& e : errors) {
    // A query only throws on cancellation; rethrow so the caller unwinds.
    if (e) std::rethrow_exception(e);
  }
  co_return std::move(results);
}

}  // namespace pdlb
