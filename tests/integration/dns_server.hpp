// A real DNS server (Debian's dnsmasq) on a loopback port, serving records from a hosts file the
// test rewrites, for the DNS discovery tests.
#pragma once

#include "common/process.hpp"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace pdlb::test {

class dns_server {
 public:
  using records = std::vector<std::pair<std::string, std::string>>;  ///< (name, IP address)

  /// Starts dnsmasq on 127.0.0.1 answering for `domain` from `initial`; nullptr (with a test
  /// failure) if it cannot start.
  static std::unique_ptr<dns_server> start(const std::string& domain, const records& initial) {
    const std::string binary = find_dnsmasq();
    if (binary.empty()) {
      ADD_FAILURE() << "dnsmasq not found (Debian dnsmasq-base; scripts/setup.sh installs it)";
      return nullptr;
    }
    std::unique_ptr<dns_server> s(new dns_server());
    char dir_template[] = "/tmp/pdlb-dns-XXXXXX";
    if (!::mkdtemp(dir_template)) {
      ADD_FAILURE() << "mkdtemp failed";
      return nullptr;
    }
    s->dir_ = dir_template;
    s->hosts_ = s->dir_ + "/hosts";
    s->write(initial);
    // The port is learnt by binding port 0 first; if another process takes it before dnsmasq
    // does, dnsmasq exits and another port is tried.
    for (int attempt = 0; attempt < 5 && !s->proc_; ++attempt) {
      const int port = free_udp_port();
      const passwd* pw = ::getpwuid(::geteuid());
      auto proc = std::make_unique<child_process>(std::vector<std::string>{
          binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--addn-hosts=" + s->hosts_,
          "--local=/" + domain + "/",  // answers NXDOMAIN/NODATA itself rather than REFUSED
          "--listen-address=127.0.0.1", "--bind-interfaces", "--port=" + std::to_string(port),
          "--cache-size=0", "--pid-file=", "--log-facility=-", "--user=" + std::string(pw ? pw->pw_name : "root")});
      if (proc->wait_for_line(std::regex("read " + s->hosts_ + " - \\d+ names"), std::chrono::seconds(10))) {
        s->port_ = port;
        s->proc_ = std::move(proc);
      } else {
        proc->expect_any_exit();  // the port was taken meanwhile and it exited: another port is tried
      }
    }
    if (!s->proc_) {
      ADD_FAILURE() << "dnsmasq did not start";
      return nullptr;
    }
    return s;
  }

  ~dns_server() {
    if (proc_) {
      proc_->signal(SIGTERM);
      proc_->wait_exit(std::chrono::seconds(5));
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  /// "127.0.0.1:PORT", for pdlb's --dns-server.
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  /// Replaces the records and waits until dnsmasq has read them (SIGHUP rereads the hosts file).
  void set(const records& r) {
    write(r);
    const auto from = proc_->line_count();
    proc_->signal(SIGHUP);
    EXPECT_TRUE(proc_->wait_for_line(std::regex("read " + hosts_ + " - \\d+ names"), std::chrono::seconds(10), from))
        << proc_->output();
  }

 private:
  dns_server() = default;

  void write(const records& r) {
    const std::string tmp = hosts_ + ".new";
    {
      std::ofstream out(tmp);
      for (const auto& [name, address] : r) out << address << ' ' << name << '\n';
    }
    std::filesystem::rename(tmp, hosts_);  // dnsmasq never reads half a file
  }

  static std::string find_dnsmasq() {
    for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"}) {
      std::string p = std::string(dir) + "/dnsmasq";
      if (::access(p.c_str(), X_OK) == 0) return p;
    }
    return {};
  }

  static int free_udp_port() {
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
      port = ntohs(a.sin_port);
    ::close(fd);
    return port;
  }

  std::string dir_;
  std::string hosts_;
  int port_ = 0;
  std::unique_ptr<child_process> proc_;
};

}  // namespace pdlb::test
