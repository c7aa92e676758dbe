#include "pdlb/logging.hpp"

#include "pdlb/json_escape.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <memory>
#include <string>

namespace pdlb {

namespace {

thread_local const log_fields* current_fields = nullptr;

// {"time":"2026-11-30T10:42:14.123456Z","level":"info","logger":"pdlb","thread":123,
//  "request_id":"...","worker":"...","message":"..."} (the two fields when a log_fields is in scope):
// UTC with microseconds so that lines from several hosts sort; the message is escaped with the
// library's JSON escaper, which also repairs invalid UTF-8 (a worker's error text may be anything).
class json_formatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    const auto since_epoch = msg.time.time_since_epoch();
    const std::time_t secs = duration_cast<seconds>(since_epoch).count();
    const auto micros = duration_cast<microseconds>(since_epoch).count() % 1000000;
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char stamp[40];
    std::size_t n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(stamp + n, sizeof stamp - n, ".%06lldZ", static_cast<long long>(micros));

    line_.clear();
    line_ += "{\"time\":\"";
    line_ += stamp;
    line_ += "\",\"level\":\"";
    const auto level = spdlog::level::to_string_view(msg.level);
    line_.append(level.data(), level.size());
    line_ += "\",\"logger\":";
    append_json_string(line_, std::string_view(msg.logger_name.data(), msg.logger_name.size()));
    line_ += ",\"thread\":";
    line_ += std::to_string(msg.thread_id);
    if (const log_fields* f = log_fields::current()) {
      if (!f->request_id().empty()) {
        line_ += ",\"request_id\":";
        append_json_string(line_, f->request_id());
      }
      if (!f->worker().empty()) {
        line_ += ",\"worker\":";
        append_json_string(line_, f->worker());
      }
    }
    line_ += ",\"message\":";
    append_json_string(line_, std::string_view(msg.payload.data(), msg.payload.size()));
    line_ += "}\n";
    dest.append(line_.data(), line_.data() + line_.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<json_formatter>(); }

 private:
  std::string line_;  // reused: one formatter per sink, called under the sink's lock
};

std::unique_ptr<spdlog::formatter> make_formatter(std::string_view format) {
  if (format == "json") return std::make_unique<json_formatter>();
  return std::make_unique<spdlog::pattern_formatter>("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v");
}

}  // namespace

void setup_logging(std::string_view name, std::string_view format, std::string_view level) {
  // automatic: colour codes only when stderr is a terminal (spdlog checks isatty and TERM), so
  // journald and files get plain text; NO_COLOR (no-color.org) turns them off on a terminal too.
  const char* no_color = std::getenv("NO_COLOR");
  const auto mode = no_color && *no_color ? spdlog::color_mode::never : spdlog::color_mode::automatic;
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>(mode);
  auto logger = std::make_shared<spdlog::logger>(std::string(name), std::move(sink));
  logger->set_formatter(make_formatter(format));
  logger->set_level(spdlog::level::from_str(std::string(level)));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

void set_log_format(std::string_view format) { spdlog::default_logger()->set_formatter(make_formatter(format)); }

log_fields::log_fields(std::string_view request_id, std::string_view worker)
    : request_id_(request_id), worker_(worker), outer_(current_fields) {
  current_fields = this;
}

log_fields::~log_fields() { current_fields = outer_; }

const log_fields* log_fields::current() { return current_fields; }

}  // namespace pdlb
