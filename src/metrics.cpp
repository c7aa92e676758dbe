#include "pdlb/metrics.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

namespace pdlb {

namespace {

using nanos = std::chrono::nanoseconds;

// The bounds in steady_clock ticks, so that bucket_of compares integers.
constexpr std::array<std::int64_t, latency_bounds.size()> bound_ticks = [] {
  std::array<std::int64_t, latency_bounds.size()> t{};
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
               std::chrono::duration<double>(latency_bounds[i]))
               .count();
  return t;
}();

void append_number(std::string& out, double v) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, ec == std::errc() ? end : buf);
}

void append_number(std::string& out, std::uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, ec == std::errc() ? end : buf);
}

}  // namespace

std::size_t local_histogram::bucket_of(std::chrono::steady_clock::duration d) {
  const auto t = d.count();
  std::size_t i = 0;
  while (i < bound_ticks.size() && t > bound_ticks[i]) ++i;  // le: a bound is inclusive
  return i;
}

void local_histogram::observe(std::chrono::steady_clock::duration d) {
  if (d.count() < 0) d = {};
  counts_[bucket_of(d)].add();
  sum_ns_.add(static_cast<std::uint64_t>(std::chrono::duration_cast<nanos>(d).count()));
}

std::uint64_t local_histogram::snapshot::count() const {
  std::uint64_t n = 0;
  for (auto c : counts) n += c;
  return n;
}

void local_histogram::snapshot::merge(const local_histogram& h) {
  for (std::size_t i = 0; i < buckets; ++i) counts[i] += h.counts_[i].value();
  sum_ns += h.sum_ns_.value();
}

std::string_view to_string(route_label r) {
  switch (r) {
    case route_label::generate: return "/generate";
    case route_label::completions: return "/v1/completions";
    case route_label::chat_completions: return "/v1/chat/completions";
    default: return "other";
  }
}

route_label route_of(std::string_view path) {
  if (path == "/generate") return route_label::generate;
  if (path == "/v1/completions") return route_label::completions;
  if (path == "/v1/chat/completions") return route_label::chat_completions;
  return route_label::other;
}

std::string_view to_string(retry_reason r) {
  switch (r) {
    case retry_reason::prefill_failed: return "prefill_failed";
    case retry_reason::decode_failed: return "decode_failed";
    default: return "decode_status";
  }
}

std::string_view to_string(cancel_reason r) {
  switch (r) {
    case cancel_reason::prefill_failed: return "prefill_failed";
    case cancel_reason::decode_failed: return "decode_failed";
    case cancel_reason::client_gone: return "client_gone";
    default: return "relay_ended";
  }
}

void metrics_text::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += help;  // our own fixed texts: no backslash or newline to escape
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void metrics_text::sample_head(std::string_view name, std::string_view labels) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    out_ += labels;
    out_ += '}';
  }
  out_ += ' ';
}

void metrics_text::sample(std::string_view name, std::string_view labels, double value) {
  sample_head(name, labels);
  append_number(out_, value);
  out_ += '\n';
}

void metrics_text::sample(std::string_view name, std::string_view labels, std::uint64_t value) {
  sample_head(name, labels);
  append_number(out_, value);
  out_ += '\n';
}

void metrics_text::histogram(std::string_view name, std::string_view labels, const local_histogram::snapshot& h) {
  const std::string base(name);
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < local_histogram::buckets; ++i) {
    cumulative += h.counts[i];
    std::string l(labels);
    if (i < latency_bounds.size()) {
      std::string le;
      append_number(le, latency_bounds[i]);
      label(l, "le", le);
    } else {
      label(l, "le", "+Inf");
    }
    sample(base + "_bucket", l, cumulative);
  }
  sample(base + "_sum", labels, static_cast<double>(h.sum_ns) / 1e9);
  sample(base + "_count", labels, cumulative);
}

void metrics_text::label(std::string& labels, std::string_view name, std::string_view value) {
  if (!labels.empty()) labels += ',';
  labels += name;
  labels += "=\"";
  for (char c : value) {
    if (c == '\\') labels += "\\\\";
    else if (c == '"') labels += "\\\"";
    else if (c == '\n') labels += "\\n";
    else labels += c;
  }
  labels += '"';
}

namespace {

// /proc/self/stat fields after the command name (which may hold spaces and parentheses).
bool read_proc_stat(std::vector<std::string>& fields) {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  auto close = line.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream rest(line.substr(close + 2));
  std::string f;
  while (rest >> f) fields.push_back(f);
  return true;
}

double boot_time_seconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value = 0;
  while (in >> key) {
    if (key == "btime") {
      in >> value;
      return value;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

std::uint64_t open_fds() {
  std::uint64_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    if (n > 0) --n;  // the directory stream's own descriptor
  }
  return n;
}

}  // namespace

void append_process_metrics(metrics_text& out) {
  std::vector<std::string> f;
  if (read_proc_stat(f) && f.size() > 21) {
    // Fields are numbered from 3 (state) in proc(5): utime 14, stime 15, starttime 22, vsize 23,
    // rss 24; index = number - 3.
    const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
    const double cpu = (std::stod(f[11]) + std::stod(f[12])) / tick;
    const double start = boot_time_seconds() + std::stod(f[19]) / tick;
    const double rss = std::stod(f[21]) * static_cast<double>(::sysconf(_SC_PAGESIZE));
    out.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    out.sample("process_cpu_seconds_total", "", cpu);
    out.family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
    out.sample("process_start_time_seconds", "", start);
    out.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    out.sample("process_virtual_memory_bytes", "", std::stod(f[20]));
    out.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    out.sample("process_resident_memory_bytes", "", rss);
  }
  out.family("process_open_fds", "gauge", "Number of open file descriptors.");
  out.sample("process_open_fds", "", open_fds());
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    out.family("process_max_fds", "gauge", "Maximum number of open file descriptors.");
    out.sample("process_max_fds", "", static_cast<double>(lim.rlim_cur));
  }
}

}  // namespace pdlb
