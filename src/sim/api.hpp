// SGLang's HTTP surface on top of the simulated engine, plus the /sim/* control routes.
#pragma once

#include "engine.hpp"
#include "options.hpp"

#include "pdlb/http_server.hpp"

#include <memory>

namespace pdlb::sim {

/// State shared by all requests of one simulator (faults, ids).
class api {
 public:
  api(engine& eng, http_server& server, const sim_options& opts);
  ~api();
  api(const api&) = delete;
  api& operator=(const api&) = delete;

  /// The request handler to give to http_server.
  net::awaitable<void> handle(exchange& ex);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace pdlb::sim
