// What one server thread owns: its scratch buffers and its idle upstream connections.
//
// Each connection lives on one thread for its whole life (see http_server), so a thread's state
// needs no locks. It is handed to whoever needs it as an object (exchange::context()), never
// looked up by a thread index.
#pragma once

#include "pdlb/metrics.hpp"

#include <cstddef>
#include <memory>
#include <random>
#include <string_view>

namespace pdlb {

class upstream_pools;

/// A per-thread byte buffer lent to one user at a time, between a read and the (copying) write
/// that forwards the bytes, with no suspension in between: one buffer then serves every stream on
/// the thread and none stays resident per stream.
///
/// The rule is checked in checked builds (Debug and sanitizer builds, PDLB_CHECKED): taking the
/// buffer while a lease is alive aborts (its holder suspended while holding it, and another
/// coroutine on the thread ran), and a returned buffer is filled with 0xDB so that a holder who
/// kept a pointer reads garbage that tests notice. In other builds a lease is a bare pointer.
class scratch_buffer {
 public:
  explicit scratch_buffer(std::size_t size);
  ~scratch_buffer();
  scratch_buffer(const scratch_buffer&) = delete;
  scratch_buffer& operator=(const scratch_buffer&) = delete;

  /// The buffer, for as long as the lease lives.
  class lease {
   public:
    lease() = default;
    ~lease() { reset(); }
    lease(lease&& o) noexcept : owner_(o.owner_) { o.owner_ = nullptr; }
    lease& operator=(lease&& o) noexcept {
      if (this != &o) {
        reset();
        owner_ = o.owner_;
        o.owner_ = nullptr;
      }
      return *this;
    }
    /// The buffer's bytes (size() of them).
    char* data() const { return owner_->data_.get(); }
    std::size_t size() const { return owner_->size_; }
    explicit operator bool() const { return owner_ != nullptr; }
    /// Gives the buffer back early.
    void reset();

   private:
    friend class scratch_buffer;
    explicit lease(scratch_buffer* owner) : owner_(owner) {}
    scratch_buffer* owner_ = nullptr;
  };

  /// Lends the buffer. In checked builds, aborts if it is already lent.
  lease take();
  std::size_t size() const { return size_; }

 private:
  void give_back();
  std::unique_ptr<char[]> data_;
  std::size_t size_;
  bool lent_ = false;  // maintained in checked builds only
};

/// One server thread's state.
class thread_context {
 public:
  /// Size of each scratch buffer.
  static constexpr std::size_t scratch_size = 64 * 1024;

  explicit thread_context(std::size_t index);
  ~thread_context();
  thread_context(const thread_context&) = delete;
  thread_context& operator=(const thread_context&) = delete;

  /// The thread's number (0 is the thread that called http_server::run()), for logs and counters.
  std::size_t index() const { return index_; }
  /// Body bytes of worker answers, parsed out of their HTTP framing, on their way to a client.
  scratch_buffer& body_scratch() { return body_; }
  /// Raw bytes read from worker sockets, before parsing.
  scratch_buffer& socket_scratch() { return socket_; }
  /// This thread's idle connections to workers.
  upstream_pools& pools() { return *pools_; }
  /// This thread's random engine (worker choice, bootstrap rooms), seeded_rng().
  std::mt19937_64& rng() { return rng_; }
  /// This thread's request metrics: written by this thread only, read by scrapes from any.
  thread_metrics& metrics() { return metrics_; }
  const thread_metrics& metrics() const { return metrics_; }

 private:
  std::size_t index_;
  scratch_buffer body_;
  scratch_buffer socket_;
  std::unique_ptr<upstream_pools> pools_;
  std::mt19937_64 rng_;
  thread_metrics metrics_;
};

}  // namespace pdlb
