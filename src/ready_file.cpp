#include "pdlb/ready_file.hpp"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>

namespace pdlb {

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw std::system_error(errno, std::generic_category(), what + " " + path);
}

}  // namespace

void write_ready_file(const std::string& path, const ready_info& info) {
  nlohmann::json j{{"host", info.host}, {"port", info.port}};
  if (info.bootstrap_port) j["bootstrap_port"] = *info.bootstrap_port;
  if (info.metrics_port) j["metrics_port"] = *info.metrics_port;
  const std::string text = j.dump() + "\n";
  // The temporary name is unique per process, so two writers never share one; rename() within a
  // directory replaces the target in one step.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create", tmp);
  for (std::size_t off = 0; off < text.size();) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int saved = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      errno = saved;
      fail("cannot write", tmp);
    }
    off += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    int saved = errno;
    ::unlink(tmp.c_str());
    errno = saved;
    fail("cannot write", path);
  }
}

std::optional<ready_info> read_ready_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  auto j = nlohmann::json::parse(text.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  auto host = j.find("host");
  auto port = j.find("port");
  if (host == j.end() || !host->is_string() || port == j.end() || !port->is_number_unsigned() ||
      port->get<std::uint64_t>() > 65535)
    return std::nullopt;
  ready_info info;
  info.host = host->get<std::string>();
  info.port = port->get<std::uint16_t>();
  if (auto b = j.find("bootstrap_port"); b != j.end()) {
    if (!b->is_number_unsigned() || b->get<std::uint64_t>() > 65535) return std::nullopt;
    info.bootstrap_port = b->get<std::uint16_t>();
  }
  if (auto m = j.find("metrics_port"); m != j.end()) {
    if (!m->is_number_unsigned() || m->get<std::uint64_t>() > 65535) return std::nullopt;
    info.metrics_port = m->get<std::uint16_t>();
  }
  return info;
}

}  // namespace pdlb
