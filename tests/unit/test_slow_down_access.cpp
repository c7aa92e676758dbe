// POST /slow_down and the worker routes are admin routes: without --admin-api-key only loopback
// clients may call them.
// A real non-loopback client cannot be had in a test that talks to 127.0.0.0/8 only, so the
// handler runs here on an exchange that reports the peer address the test chooses.
#include "pdlb/proxy.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace pdlb {
namespace {

class peer_exchange final : public exchange {
 public:
  peer_exchange(std::string peer, std::string body, std::string target = "/slow_down")
      : peer_(std::move(peer)) {
    req_.method(http::verb::post);
    req_.target(target);
    req_.body() = std::move(body);
  }
  const request& req() const override { return req_; }
  request& req() override { return req_; }
  thread_context& context() override { return *ctx_; }
  std::string remote() const override { return peer_; }
  net::awaitable<error_code> respond(http::status status, std::string_view body, std::string_view,
                                     std::string_view) override {
    status_ = status;
    body_ = body;
    responded_ = true;
    co_return error_code{};
  }
  net::awaitable<error_code> begin_stream(http::status, std::string_view, std::string_view) override {
    co_return net::error::operation_not_supported;
  }
  net::awaitable<error_code> write_chunk(std::string_view) override {
    co_return net::error::operation_not_supported;
  }
  error_code put_chunk(std::string_view, std::string_view) override { return net::error::operation_not_supported; }
  net::awaitable<error_code> flush() override { co_return error_code{}; }
  net::awaitable<error_code> end_stream() override { co_return net::error::operation_not_supported; }
  void drop_connection() override {}
  void abort_stream() override {}
  bool responded() const override { return responded_; }
  void close_after() override {}

  http::status status_{};
  std::string body_;

 private:
  std::string peer_;
  request req_;
  std::unique_ptr<thread_context> ctx_ = std::make_unique<thread_context>(0);  // movable, for serve()
  bool responded_ = false;
};

// Runs the handler for one request from `peer` on a pdlb with no workers.
peer_exchange serve(const std::string& peer, const std::string& body, const std::string& admin_key = "",
                    const std::string& target = "/slow_down") {
  config cfg;
  cfg.admin_api_key = admin_key;
  load_balancer lb(cfg);
  peer_exchange ex(peer, body, target);
  net::io_context ioc;
  net::co_spawn(ioc, lb.handle(ex), net::detached);
  ioc.run();
  return ex;
}

TEST(SlowDownAccess, NonLoopbackClientWithoutAdminKeyGets403) {
  for (const char* peer : {"10.1.2.3:40000", "192.168.0.7:5", "2001:db8::1:443", "::ffff:10.0.0.1:80", "?"}) {
    auto ex = serve(peer, R"({"forward_sleep_time": 90})");
    EXPECT_EQ(ex.status_, http::status::forbidden) << peer << ": " << ex.body_;
    auto j = nlohmann::json::parse(ex.body_, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << ex.body_;
    EXPECT_NE(j["error"]["message"].get<std::string>().find("loopback"), std::string::npos) << ex.body_;
  }
}

TEST(SlowDownAccess, LoopbackClientsArePastTheGuard) {
  // Past the guard the request is checked and sent on: with no decode worker that is a 503.
  for (const char* peer : {"127.0.0.1:40000", "127.3.2.1:9", "::1:40000", "::ffff:127.0.0.1:80"}) {
    auto ex = serve(peer, R"({"forward_sleep_time": 90})");
    EXPECT_EQ(ex.status_, http::status::service_unavailable) << peer << ": " << ex.body_;
  }
}

TEST(SlowDownAccess, WithAnAdminKeyTheKeyDecidesNotTheAddress) {
  auto no_key = serve("127.0.0.1:1", R"({"forward_sleep_time": 1})", "sk-admin");
  EXPECT_EQ(no_key.status_, http::status::unauthorized);
  peer_exchange remote("10.1.2.3:4", R"({"forward_sleep_time": 1})");
  config cfg;
  cfg.admin_api_key = "sk-admin";
  load_balancer lb(cfg);
  remote.req().set(http::field::authorization, "Bearer sk-admin");
  net::io_context ioc;
  net::co_spawn(ioc, lb.handle(remote), net::detached);
  ioc.run();
  EXPECT_EQ(remote.status_, http::status::service_unavailable) << remote.body_;
}

TEST(WorkerRoutesAccess, NonLoopbackClientWithoutAdminKeyGets403AndLoopbackGetsThrough) {
  const std::string add = R"({"url": "http://127.0.0.1:9", "worker_type": "decode"})";
  for (const char* target : {"/workers", "/add_worker?url=http://127.0.0.1:9", "/register"}) {
    auto refused = serve("10.1.2.3:40000", add, "", target);
    EXPECT_EQ(refused.status_, http::status::forbidden) << target << ": " << refused.body_;
  }
  auto allowed = serve("127.0.0.1:40000", add, "", "/workers");
  EXPECT_EQ(allowed.status_, http::status::ok) << allowed.body_;
  // With a key, the key decides, wherever the client is.
  auto keyed = serve("127.0.0.1:40000", add, "sesame", "/workers");
  EXPECT_EQ(keyed.status_, http::status::unauthorized) << keyed.body_;
}

}  // namespace
}  // namespace pdlb
