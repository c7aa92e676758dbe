// Log set-up for pdlb's executables: spdlog on stderr, as text (colours only on a terminal) or as
// one JSON object per line for journald and log shippers.
#pragma once

#include <string>
#include <string_view>

namespace pdlb {

/// Makes a stderr logger named `name` the default one, in `format` ("text" or "json") at `level`
/// (spdlog's names: trace ... off). Text gets colour codes only when stderr is a terminal and
/// NO_COLOR is not set. Call once at start-up, before other threads log.
void setup_logging(std::string_view name, std::string_view format, std::string_view level);

/// Switches the default logger to `format` ("text" or "json"); safe while other threads log.
void set_log_format(std::string_view format);

/// Fields that the JSON format adds to the lines this thread logs while the object lives:
/// "request_id" and "worker" (empty ones are left out). The text format has them in its messages.
/// Scoped around the spdlog call (loggers here write synchronously, on the calling thread).
class log_fields {
 public:
  explicit log_fields(std::string_view request_id, std::string_view worker = {});
  ~log_fields();
  log_fields(const log_fields&) = delete;
  log_fields& operator=(const log_fields&) = delete;

  std::string_view request_id() const { return request_id_; }
  std::string_view worker() const { return worker_; }
  /// The innermost fields in scope on this thread, or null.
  static const log_fields* current();

 private:
  std::string_view request_id_;
  std::string_view worker_;
  const log_fields* outer_;
};

}  // namespace pdlb
