// systemd's readiness and watchdog protocol (sd_notify(3)), spoken directly: one datagram per
// message to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" for an abstract one).
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <system_error>

namespace pdlb {

class systemd_notifier {
 public:
  /// A notifier that sends nothing (not started by systemd).
  systemd_notifier() = default;
  /// A notifier for `socket_path` ("/run/...", or "@name" for an abstract socket) whose watchdog
  /// wants a ping at least every `watchdog` (zero: no watchdog).
  explicit systemd_notifier(std::string socket_path,
                            std::chrono::microseconds watchdog = std::chrono::microseconds(0));
  /// From the environment: $NOTIFY_SOCKET, and $WATCHDOG_USEC unless $WATCHDOG_PID names another
  /// process. Unset or unusable variables give a notifier that sends nothing.
  static systemd_notifier from_environment();

  ~systemd_notifier();
  systemd_notifier(systemd_notifier&& other) noexcept;
  systemd_notifier& operator=(systemd_notifier&& other) noexcept;
  systemd_notifier(const systemd_notifier&) = delete;
  systemd_notifier& operator=(const systemd_notifier&) = delete;

  /// True if messages go somewhere.
  bool enabled() const { return !socket_path_.empty(); }
  /// The watchdog timeout systemd set; zero if there is none.
  std::chrono::microseconds watchdog_timeout() const { return watchdog_; }

  /// Sends `state` (newline-separated VAR=value lines, e.g. "READY=1\nSTATUS=serving"). Callable
  /// from any thread. A no-op returning success when not enabled.
  std::error_code notify(std::string_view state) const;

  /// "RELOADING=1\nMONOTONIC_USEC=<now>", as systemd wants it at the start of a reload.
  static std::string reloading_message();

 private:
  std::string socket_path_;
  std::chrono::microseconds watchdog_{0};
  int fd_ = -1;
};

}  // namespace pdlb
