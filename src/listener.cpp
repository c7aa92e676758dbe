#include "pdlb/listener.hpp"

#include <boost/asio/ip/v6_only.hpp>

#include <stdexcept>

namespace pdlb {

namespace net = boost::asio;
using tcp = net::ip::tcp;

std::unique_ptr<tcp::acceptor> open_listener(net::io_context& ioc, const std::string& host, std::uint16_t port,
                                             int backlog) {
  boost::system::error_code ec;
  auto results = tcp::resolver(ioc).resolve(host, std::to_string(port),
                                            tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (!ec && results.empty()) ec = net::error::host_not_found;
  // Not boost::system::system_error: its what() carries Asio's source location (Boost 1.81).
  if (ec) throw std::runtime_error("cannot resolve " + host + ": " + ec.message());
  const tcp::endpoint ep = results.begin()->endpoint();
  auto acceptor = std::make_unique<tcp::acceptor>(ioc);
  acceptor->open(ep.protocol());
  acceptor->set_option(net::socket_base::reuse_address(true));
  if (ep.address().is_v6()) acceptor->set_option(net::ip::v6_only(false), ec);  // refused: IPv6 only
  acceptor->bind(ep);
  acceptor->listen(backlog);
  return acceptor;
}

}  // namespace pdlb
