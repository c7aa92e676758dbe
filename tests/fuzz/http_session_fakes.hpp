// Fake SGLang PD workers for fuzz_http_session: a prefill and a decode worker on 127.0.0.1 (port 0),
// answering at once (no timers) in SGLang's shapes (see src/sim/api.cpp).
//
// They run in a child process, forked before the fuzzer starts any thread, like real workers: their
// memory and threads are out of sight of libFuzzer's malloc counting and LeakSanitizer (whose
// per-input check, run while a worker thread was building an answer, reported that thread's
// temporaries as leaks), and their code adds nothing to the fuzzer's coverage. Each is a plain
// blocking server (an accept thread, a thread per connection, Beast's synchronous reads), not
// pdlb's http_server. This file is compiled without coverage (ASan and UBSan only).
//
// A request body may carry "fuzz_fault": "<prefill|decode>_<kind>"; the worker of that role then
// misbehaves (the other one answers normally):
//   status   500 with a JSON error body          text     503 with a text/plain body
//   drop     closes the connection, no answer    garbage  200 with a body that is not JSON
//   cut      a chunked answer cut mid-event      empty    a stream with no event (non-stream: empty body)
//   nodone   a stream without data: [DONE]       big      a 300 KB answer (stream: 64 KB events)
//   huge     a 1.1 MB answer, over pdlb's max_body_size in the fuzz target (1 MiB)
#pragma once

#include <string>

namespace pdlb_fuzz {

struct fake_urls {
  std::string prefill;  ///< "http://127.0.0.1:PORT"
  std::string decode;
};

/// Forks the child that runs both workers and returns their URLs once they listen. Call it once,
/// before any thread is started. The child is killed when this process ends (PR_SET_PDEATHSIG).
fake_urls start_fake_workers();

}  // namespace pdlb_fuzz
