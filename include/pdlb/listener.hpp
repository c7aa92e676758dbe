// Opening a listening TCP socket, for pdlb's HTTP server and pdlb-sim's bootstrap server alike.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace pdlb {

/// A socket listening on `host`:`port` (a numeric address or a name; port 0 lets the kernel pick,
/// local_endpoint() tells which). SO_REUSEADDR is set, so a restart binds a port whose old
/// connections are in TIME_WAIT; an IPv6 address also accepts IPv4 clients where the system allows.
/// Throws std::runtime_error when the host does not resolve, boost::system::system_error when binding
/// or listening fails.
std::unique_ptr<boost::asio::ip::tcp::acceptor> open_listener(boost::asio::io_context& ioc, const std::string& host,
                                                              std::uint16_t port, int backlog);

}  // namespace pdlb
