// open_listener: the one place pdlb and pdlb-sim open a listening socket. (Its error for a name
// that does not resolve is not tested here: that would ask the system's DNS server.)
#include "pdlb/listener.hpp"

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/system/system_error.hpp>


namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;

TEST(Listener, PortZeroBindsAKernelChosenPortThatAcceptsConnections) {
  net::io_context ioc;
  auto acceptor = pdlb::open_listener(ioc, "127.0.0.1", 0, 16);
  const auto ep = acceptor->local_endpoint();
  EXPECT_NE(ep.port(), 0);
  EXPECT_EQ(ep.address().to_string(), "127.0.0.1");
  tcp::socket client(ioc);
  client.connect(ep);
  tcp::socket server = acceptor->accept();
  EXPECT_EQ(server.remote_endpoint().port(), client.local_endpoint().port());
}

TEST(Listener, APortAlreadyListenedOnIsRefused) {
  net::io_context ioc;
  auto first = pdlb::open_listener(ioc, "127.0.0.1", 0, 16);
  EXPECT_THROW(pdlb::open_listener(ioc, "127.0.0.1", first->local_endpoint().port(), 16),
               boost::system::system_error);
}

}  // namespace
