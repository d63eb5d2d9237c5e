// Streamed bodies (http::BodyStream): the transport of an export of any size, over real loopback
// sockets, with producers on threads of their own as the database workers are.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "apiserver/http/server.hpp"
#include "tests/support/test_support.hpp"

using namespace spillway;
using namespace std::chrono_literals;

namespace {

// /rows?n=N streams N numbered lines; /fail streams some, then fails; /endless streams until the
// client is gone. Each producer runs on a thread of its own and says how it ended.
class StreamingDispatcher : public http::Dispatcher {
 public:
  void Dispatch(http::Request request, http::Responder respond) override {
    http::Response r;
    r.content_type = "text/csv";
    r.stream = std::make_shared<http::BodyStream>(4096);
    auto stream = r.stream;
    respond(std::move(r));
    const std::string path = request.path;
    const int n = request.query.count("n") ? std::stoi(request.query.at("n")) : 0;
    std::thread([this, stream, path, n] {
      std::int64_t written = 0;
      bool gone = false;
      for (int i = 0; path != "/rows" || i < n; ++i) {
        if (path == "/fail" && i == 100) break;
        if (!stream->Write("row " + std::to_string(i) + "," + std::string(100, 'x') + "\n")) {
          gone = true;
          break;
        }
        ++written;
      }
      stream->Close(path == "/rows");
      std::lock_guard lk(mu_);
      ended_ = true;
      client_gone_ = gone;
      chunks_ = written;
      cv_.notify_all();
    }).detach();
  }
  void Finished(const http::Request&, const http::Response&, double) override {}

  // Waits (at most `limit`) for the last producer to end: whether it was told the client left.
  std::optional<bool> WaitEnded(std::chrono::seconds limit) {
    std::unique_lock lk(mu_);
    if (!cv_.wait_for(lk, limit, [&] { return ended_; })) return std::nullopt;
    ended_ = false;
    return client_gone_;
  }
  std::int64_t chunks() {
    std::lock_guard lk(mu_);
    return chunks_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool ended_ = false, client_gone_ = false;
  std::int64_t chunks_ = 0;
};

class StreamedBody : public ::testing::Test {
 protected:
  void SetUp() override {
    http::ListenerOptions o;
    o.name = "test";
    o.listen = HostPort{"127.0.0.1", 0};
    o.body_timeout = Millis(2000);
    port_ = runtime_.AddListener(o, dispatcher_);
    thread_ = std::thread([this] { runtime_.Run(Millis(2000)); });
  }
  void TearDown() override {
    runtime_.RequestStop();
    thread_.join();
  }
  http::Runtime runtime_{1};
  StreamingDispatcher dispatcher_;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Everything the server sends until it closes the connection.
std::string ReadToClose(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace

TEST_F(StreamedBody, ChunkedBodiesArriveWholeAndTheConnectionServesOn) {
  test::HttpConn c(port_);
  ASSERT_TRUE(c.ok());
  for (const int n : {0, 1, 20'000}) {  // 20,000 rows: ~2 MB through a 4 KiB queue
    const auto r = c.Call("GET", "/rows?n=" + std::to_string(n));
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.headers.at("transfer-encoding"), "chunked");
    EXPECT_EQ(r.headers.count("content-length"), 0u);
    std::string want;
    for (int i = 0; i < n; ++i) want += "row " + std::to_string(i) + "," + std::string(100, 'x') + "\n";
    EXPECT_EQ(r.body, want);
    EXPECT_EQ(dispatcher_.WaitEnded(10s), std::optional<bool>(false));
  }
}

TEST_F(StreamedBody, AnHttp10ClientReadsTheBodyToTheConnectionsEnd) {
  const int fd = Connect(port_);
  ASSERT_GE(fd, 0);
  const std::string req = "GET /rows?n=3 HTTP/1.0\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  const std::string all = ReadToClose(fd);
  ::close(fd);
  EXPECT_NE(all.find("Connection: close"), std::string::npos) << all;
  EXPECT_EQ(all.find("Transfer-Encoding"), std::string::npos) << all;
  const std::string body = all.substr(all.find("\r\n\r\n") + 4);
  EXPECT_EQ(body, "row 0," + std::string(100, 'x') + "\nrow 1," + std::string(100, 'x') + "\nrow 2," +
                      std::string(100, 'x') + "\n");
}

TEST_F(StreamedBody, HeadSendsTheHeadAloneAndStopsTheProducer) {
  test::HttpConn c(port_);
  ASSERT_TRUE(c.ok());
  c.SendRaw("HEAD /endless HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto r = c.Read(5000ms, true);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(dispatcher_.WaitEnded(10s), std::optional<bool>(true));
  // The connection serves on.
  const auto again = c.Call("GET", "/rows?n=2");
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(std::count(again.body.begin(), again.body.end(), '\n'), 2);
}

TEST_F(StreamedBody, AProducerThatFailsMidwayCutsTheConnectionWithoutTheLastChunk) {
  const int fd = Connect(port_);
  ASSERT_GE(fd, 0);
  const std::string req = "GET /fail HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  const std::string all = ReadToClose(fd);  // returns: the server closed the connection
  ::close(fd);
  EXPECT_NE(all.find("row 99,"), std::string::npos);
  EXPECT_EQ(all.find("\r\n0\r\n\r\n"), std::string::npos) << "a failed body must not end as if whole";
  EXPECT_EQ(dispatcher_.WaitEnded(10s), std::optional<bool>(false));
}

TEST_F(StreamedBody, AClientThatLeavesMidwayStopsTheProducer) {
  const int fd = Connect(port_);
  ASSERT_GE(fd, 0);
  const std::string req = "GET /endless HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  char buf[8192];
  ASSERT_GT(::recv(fd, buf, sizeof buf, 0), 0);  // the head and the first rows
  ::close(fd);
  // The endless producer is told at its next chunks (a write to a closed connection fails), or
  // at the latest by the body timeout: it ends, having written what the socket took.
  EXPECT_EQ(dispatcher_.WaitEnded(15s), std::optional<bool>(true));
  const auto written = dispatcher_.chunks();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(dispatcher_.chunks(), written);
}

TEST_F(StreamedBody, AClientThatStopsReadingIsCutOffByTheBodyTimeout) {
  const int fd = Connect(port_);
  ASSERT_GE(fd, 0);
  const int small = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  const std::string req = "GET /endless HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  // Never read: the socket's buffers fill, the server's send waits, the 2 s body timeout ends it.
  EXPECT_EQ(dispatcher_.WaitEnded(20s), std::optional<bool>(true));
  ::close(fd);
}
