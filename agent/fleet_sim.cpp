#include "agent/fleet_sim.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/json.hpp>
#include <pqxx/pqxx>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <dirent.h>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "agent/host_agent.hpp"
#include "agent/http_client.hpp"
#include "agent/meter.hpp"
#include "agent/sampler.hpp"
#include "core/crypto.hpp"
#include "protocol/agent.hpp"

namespace spillway::agent {
namespace {
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Steady = std::chrono::steady_clock;
using std::chrono::milliseconds;
using net::awaitable;
using net::use_awaitable;

std::int64_t SinceUs(Steady::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Steady::now() - t).count();
}

// ---- one keep-alive HTTP/1.1 connection, one request at a time ------------------------------

struct Reply {
  int status = 0;  // 0: no answer (could not connect, timed out, connection lost)
  std::string body, error;
  std::optional<int> retry_after_s;
};

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

class Conn {
 public:
  explicit Conn(const net::any_io_executor& ex) : sock_(ex), timer_(ex) {}

  // Sends `request` (a whole HTTP/1.1 request) to `to` and reads the answer within `timeout`. A
  // kept-alive connection the server closed meanwhile is opened again once, before anything was read.
  awaitable<Reply> Call(tcp::endpoint to, const std::string& request, milliseconds timeout) {
    const std::uint64_t gen = ++gen_;
    timed_out_ = false;
    timer_.expires_after(timeout);
    timer_.async_wait([this, gen](const boost::system::error_code& ec) {
      if (ec || gen != gen_) return;
      timed_out_ = true;
      boost::system::error_code ignored;
      sock_.close(ignored);
    });
    Reply out;
    for (int attempt = 0; attempt < 2 && !closed_; ++attempt) {
      const bool reused = sock_.is_open() && to == peer_;
      out = co_await Once(to, request);
      if (out.status != 0 || !reused || timed_out_) break;
    }
    if (timed_out_) out = Reply{0, "", "timed out", std::nullopt};
    else if (closed_ && out.status == 0) out.error = "closed";
    ++gen_;
    timer_.cancel();
    co_return out;
  }
  // For good: a call in flight ends without being sent again on a new connection (the run is over).
  void Close() {
    closed_ = true;
    boost::system::error_code ignored;
    sock_.close(ignored);
  }

 private:
  awaitable<Reply> Once(tcp::endpoint to, const std::string& request) {
    Reply out;
    boost::system::error_code ec;
    if (!sock_.is_open() || to != peer_) {
      sock_.close(ec);
      co_await sock_.async_connect(to, net::redirect_error(use_awaitable, ec));
      if (ec) {
        sock_.close(ec);
        out.error = "connect: " + ec.message();
        co_return out;
      }
      sock_.set_option(tcp::no_delay(true), ec);
      peer_ = to;
    }
    buf_.clear();
    co_await net::async_write(sock_, net::buffer(request), net::redirect_error(use_awaitable, ec));
    std::size_t head = 0;
    if (!ec) head = co_await net::async_read_until(sock_, net::dynamic_buffer(buf_), "\r\n\r\n",
                                                   net::redirect_error(use_awaitable, ec));
    if (ec) {
      sock_.close(ec);
      out.error = "connection lost";
      co_return out;
    }
    // "HTTP/1.1 200 OK", then the headers this client needs.
    std::size_t length = 0;
    bool close = false;
    if (buf_.size() > 12) out.status = std::atoi(buf_.c_str() + 9);
    std::size_t pos = buf_.find("\r\n");
    while (pos + 2 < head) {
      const std::size_t end = buf_.find("\r\n", pos + 2);
      const std::string line = buf_.substr(pos + 2, end - pos - 2);
      pos = end;
      const auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      const std::string name = Lower(line.substr(0, colon));
      std::string value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.erase(value.begin());
      if (name == "content-length") length = std::strtoull(value.c_str(), nullptr, 10);
      else if (name == "connection") close = Lower(value) == "close";
      else if (name == "retry-after") out.retry_after_s = std::atoi(value.c_str());
    }
    if (buf_.size() < head + length)
      co_await net::async_read(sock_, net::dynamic_buffer(buf_), net::transfer_exactly(head + length - buf_.size()),
                               net::redirect_error(use_awaitable, ec));
    if (ec) {
      sock_.close(ec);
      out = Reply{0, "", "connection lost", std::nullopt};
      co_return out;
    }
    out.body = buf_.substr(head, length);
    if (close) sock_.close(ec);
    co_return out;
  }

  tcp::socket sock_;
  net::steady_timer timer_;
  tcp::endpoint peer_;
  std::string buf_;
  std::uint64_t gen_ = 0;
  bool timed_out_ = false;
  bool closed_ = false;
};

std::string Request(const char* method, const std::string& target, const std::string& bearer,
                    const std::string& body, const std::string& extra = "") {
  std::string r;
  r.reserve(160 + target.size() + bearer.size() + body.size());
  r.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: spillway\r\n");
  if (!bearer.empty()) r.append("Authorization: Bearer ").append(bearer).append("\r\n");
  r.append(extra);
  if (!body.empty() || std::string(method) == "POST")
    r.append("Content-Type: application/json\r\nContent-Length: ").append(std::to_string(body.size())).append("\r\n");
  r.append("\r\n").append(body);
  return r;
}

// ---- what the run measures ------------------------------------------------------------------

enum Kind { kRegister, kHeartbeat, kAssignments, kSamples, kLaunch, kTerminate, kKinds };
constexpr const char* kKindNames[kKinds] = {"register", "heartbeat", "assignments", "samples", "launch", "terminate"};

struct KindStats {
  std::int64_t calls = 0, ok = 0, unavailable = 0, other = 0, unanswered = 0;
  std::vector<std::uint32_t> latency_us;
};

struct Percentiles {
  double p50 = 0, p99 = 0, max = 0;
};
template <class T>
Percentiles PercentilesOf(std::vector<T> v, double scale) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return static_cast<double>(v[std::min(v.size() - 1, static_cast<std::size_t>(q * v.size()))]) * scale; };
  p.p50 = at(0.50);
  p.p99 = at(0.99);
  p.max = static_cast<double>(v.back()) * scale;
  return p;
}

// CPU ticks (user + system) and RSS of a process, from /proc; with its children when asked.
struct ProcSample {
  std::int64_t ticks = 0, rss_kb = 0;
  bool alive = false;
};
// A process's own CPU ticks; with `reaped`, also those of its children that have exited and been
// waited for (PostgreSQL's backends, once a replica that held them is gone).
std::int64_t TicksOf(int pid, int* ppid = nullptr, bool reaped = false) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = s.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream rest(s.substr(paren + 2));
  std::vector<std::string> f{std::istream_iterator<std::string>(rest), std::istream_iterator<std::string>()};
  if (f.size() < 13) return 0;
  if (ppid) *ppid = std::stoi(f[1]);
  const std::int64_t own = std::stoll(f[11]) + std::stoll(f[12]);  // utime, stime (fields 14 and 15)
  return reaped && f.size() >= 15 ? own + std::stoll(f[13]) + std::stoll(f[14]) : own;  // cutime, cstime
}
std::int64_t RssKb(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return 0;
}
ProcSample SampleProcess(int pid, bool with_children) {
  ProcSample s{TicksOf(pid, nullptr, with_children), RssKb(pid)};
  s.alive = s.rss_kb > 0;  // a process killed in the window has no /proc entry, or no memory as a zombie
  if (!with_children) return s;
  if (DIR* d = ::opendir("/proc")) {
    while (dirent* e = ::readdir(d)) {
      const int child = std::atoi(e->d_name);
      if (child <= 0 || child == pid) continue;
      int ppid = 0;
      const auto t = TicksOf(child, &ppid);
      if (ppid == pid) s.ticks += t;
    }
    ::closedir(d);
  }
  return s;
}
std::int64_t SelfCpuUs() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000000LL + u.ru_utime.tv_usec + u.ru_stime.tv_usec;
}

class Sim;

// ---- one simulated host --------------------------------------------------------------------

class Host {
 public:
  Host(Sim& sim, int index);
  awaitable<void> Main();
  void CloseAll() {
    short_.Close();
    ship_.Close();
    poll_.Close();
    wake_.cancel();
    poll_wait_.cancel();
  }
  bool heard() const { return heard_; }
  // Nothing left to ship and nothing in flight.
  bool quiet() const { return outbox_.empty() && shipping_ == 0; }

 private:
  struct Instance {
    std::string state;  // starting | running | stopped
    std::vector<int> gpus;
    Steady::time_point boots_at;
    std::optional<TimeMs> preempt_at;
  };
  awaitable<bool> Register();
  awaitable<void> Poll();
  awaitable<void> Heartbeat();
  awaitable<void> Ship();
  awaitable<void> ShipLoop();  // Ship, spawned beside Main
  void Apply(protocol::AssignmentList list);
  bool Advance();  // the simulated runtime: boots finish, notices end
  void ObserveMeter();
  void Kick() {
    kicked_ = true;
    wake_.cancel();
  }
  awaitable<void> Sleep(milliseconds d, net::steady_timer& on);
  awaitable<Reply> Call(Conn& conn, Kind kind, const std::string& request, milliseconds timeout);
  // Registration, heartbeats and samples: on the host's own connection (`own`), or a shared one.
  // `build` makes the request once a connection is had (a batch's sent_at is then when it is sent).
  awaitable<Reply> ShortCall(Conn& own, Kind kind, const std::function<std::string()>& build, milliseconds timeout);
  milliseconds RetryDelay(const Reply& r);

  Sim& sim_;
  const int index_;
  std::string hostname_;
  std::vector<protocol::Gpu> gpus_;
  std::size_t api_;
  // Registration and heartbeats go over short_; samples over ship_, from a loop of their own, as
  // spillway-agent ships on a thread of its own: a slow batch never holds back a heartbeat.
  Conn short_, ship_, poll_;
  net::steady_timer wake_, poll_wait_;
  std::string token_;
  milliseconds heartbeat_interval_{5000}, sample_interval_{10000};
  std::int64_t version_ = -1, next_seq_ = 0;
  std::map<std::string, Instance> instances_;
  std::unique_ptr<Meter> meter_;
  std::unique_ptr<SimulatedSampler> sampler_;
  std::deque<protocol::SampleBatch> outbox_;
  Steady::time_point next_ship_{};
  Steady::time_point last_heard_from_{};  // this host's registration, or its last heartbeat sent
  bool kicked_ = false, polling_ = false, heard_ = false, ship_loop_ = false;
  int shipping_ = 0;
};

class Sim {
 public:
  Sim(net::io_context& io, FleetSimOptions options) : io_(io), o_(std::move(options)), rng_(std::random_device{}()) {}
  int Run();

  net::io_context& io() { return io_; }
  const FleetSimOptions& options() const { return o_; }
  const tcp::endpoint& Api(std::size_t i) const { return apis_[i % apis_.size()]; }
  std::size_t api_count() const { return apis_.size(); }
  bool stopping() const { return stopping_; }
  bool sampling() const { return sampling_; }
  std::mt19937_64& rng() { return rng_; }

  // `started`: when the call was sent. Only calls sent inside the steady window count towards its
  // latencies (one sent before it may have waited on the window's own start).
  void Record(Kind kind, const Reply& r, Steady::time_point started) {
    const std::int64_t us = SinceUs(started);
    auto& k = kinds_[kind];
    ++k.calls;
    if (r.status == 0) ++k.unanswered;
    else if (r.status == 503) ++k.unavailable;
    else if (r.status >= 200 && r.status < 300) ++k.ok;
    else ++k.other;
    if (measuring_ && started >= window_start_ && r.status != 0) k.latency_us.push_back(static_cast<std::uint32_t>(std::min<std::int64_t>(us, UINT32_MAX)));
  }
  void Registered() { ++registered_; }
  void Heard() { ++heard_; }
  void SamplesStored(std::int64_t accepted, std::int64_t lag_ms, Steady::time_point sent) {
    samples_acked_ += accepted;
    if (measuring_ && sent >= window_start_) ingest_lag_ms_.push_back(static_cast<std::uint32_t>(std::max<std::int64_t>(0, lag_ms)));
  }
  void Refused422() { ++refused_batches_; }
  void Fatal(const std::string& why) {
    if (stopping_) return;
    std::cerr << "fleet-sim: " << why << "\n";
    exit_code_ = 2;
    Stop();
    io_.stop();
  }
  // A host saw an instance in its assignments for the first time.
  void Seen(const std::string& id);
  // The shared connections to apiserver `api` (FleetSimOptions::short_connections): one is free
  // when the call returns, else the caller waits its turn. They stand in for a connection per host,
  // where nothing waits: so a heartbeat goes before every other waiting call (a host's liveness must
  // not queue behind the storm's registrations in the simulator, where no real agent would queue),
  // and a released connection is handed to the next waiter, never taken by a newcomer. How long
  // each kind waited is reported (Waited).
  awaitable<Conn*> AcquireShort(std::size_t api, Kind kind) {
    auto& pool = pools_[api % pools_.size()];
    const auto t0 = Steady::now();
    Conn* c = nullptr;
    if (!pool.free.empty()) {
      c = pool.free.back();
      pool.free.pop_back();
    } else {
      auto waiter = std::make_shared<Waiter>(io_);
      (kind == kHeartbeat ? pool.urgent : pool.waiters).push_back(waiter);
      boost::system::error_code ec;
      co_await waiter->timer.async_wait(net::redirect_error(use_awaitable, ec));
      c = waiter->conn;
    }
    if (stopping_) co_return nullptr;  // a connection handed over while stopping is closed anyway
    Waited(kind, SinceUs(t0));
    co_return c;
  }
  void ReleaseShort(std::size_t api, Conn* c) {
    auto& pool = pools_[api % pools_.size()];
    auto& queue = !pool.urgent.empty() ? pool.urgent : pool.waiters;
    if (queue.empty()) {
      pool.free.push_back(c);
      return;
    }
    queue.front()->conn = c;
    queue.front()->timer.cancel();
    queue.pop_front();
  }
  void Waited(Kind kind, std::int64_t us) { max_wait_us_[kind] = std::max(max_wait_us_[kind], us); }
  // The longest any host went between calls that tell the server it is alive (registration, then
  // each heartbeat as it leaves): what must stay under the heartbeat timeout, simulator included.
  void HeartbeatGap(std::int64_t us) { max_heartbeat_gap_us_ = std::max(max_heartbeat_gap_us_, us); }
  bool pooled() const { return !pools_.empty(); }

 private:
  awaitable<void> Control();
  awaitable<void> Launcher();
  awaitable<void> LaunchOne();
  awaitable<void> TerminateLater(std::string id);
  // A launch sent at `sent` seen by its host at `seen`: its latency, then its termination.
  void LaunchSeen(const std::string& id, Steady::time_point sent, Steady::time_point seen);
  awaitable<void> StatusLines();
  // What a thread of its own read (MarkedDown), once it has: the hosts keep running meanwhile.
  awaitable<std::map<std::string, std::int64_t>> Ready(std::future<std::map<std::string, std::int64_t>> read);
  awaitable<void> Sleep(milliseconds d) {
    net::steady_timer t(io_);
    t.expires_after(d);
    boost::system::error_code ec;
    co_await t.async_wait(net::redirect_error(use_awaitable, ec));
  }
  // The tenant's call, on an idle connection of its own (a new one when all are busy), recorded.
  awaitable<Reply> TenantCall(Kind kind, const std::string& request) {
    std::unique_ptr<Conn> conn;
    if (tenant_conns_.empty()) {
      conn = std::make_unique<Conn>(io_.get_executor());
    } else {
      conn = std::move(tenant_conns_.back());
      tenant_conns_.pop_back();
    }
    const auto t0 = Steady::now();
    Reply r = co_await conn->Call(apis_[0], request, milliseconds(30000));
    Record(kind, r, t0);
    tenant_conns_.push_back(std::move(conn));
    co_return r;
  }
  void Stop();
  std::optional<std::int64_t> Wal();
  void Report(double converge_s, bool converged);

  net::io_context& io_;
  FleetSimOptions o_;
  std::vector<tcp::endpoint> apis_;
  std::vector<std::unique_ptr<Host>> hosts_;
  std::mt19937_64 rng_;
  bool stopping_ = false, measuring_ = false, sampling_ = true;
  int registered_ = 0, heard_ = 0;
  KindStats kinds_[kKinds], window_kinds_[kKinds];  // all along; the steady window's
  std::int64_t max_wait_us_[kKinds] = {};  // the longest a call waited for a shared connection, all run
  std::int64_t max_heartbeat_gap_us_ = 0;
  std::int64_t samples_acked_ = 0, refused_batches_ = 0;
  std::vector<std::uint32_t> ingest_lag_ms_, assignment_ms_;
  // Launch → seen: when each launch was sent, and what was seen before its answer came.
  std::map<std::string, Steady::time_point> launched_, seen_early_;
  std::vector<std::unique_ptr<Conn>> tenant_conns_;
  struct Waiter {
    explicit Waiter(net::io_context& io) : timer(io, Steady::time_point::max()) {}
    net::steady_timer timer;
    Conn* conn = nullptr;  // handed over by ReleaseShort
  };
  struct Pool {
    std::vector<std::unique_ptr<Conn>> conns;
    std::vector<Conn*> free;
    std::deque<std::shared_ptr<Waiter>> urgent, waiters;  // heartbeats; the rest
  };
  std::deque<Pool> pools_;
  // The steady window's start and end.
  std::map<std::string, ProcSample> proc_before_, proc_after_;
  std::int64_t self_before_ = 0, self_after_ = 0;
  std::optional<std::int64_t> wal_before_, wal_after_;
  Steady::time_point window_start_, window_end_;
  int exit_code_ = 0;
  // Hosts seen down at any moment from the storm to the report (the silence step may mark a host
  // down and its next heartbeat bring it back: the count at the end would not show it). Read from
  // PostgreSQL every second on a thread of its own, when --pg-dsn is given.
  void WatchDownHosts();
  void StopWatchingDown() {
    watching_down_ = false;
    if (down_watch_.joinable()) down_watch_.join();
  }
  std::thread down_watch_;
  std::atomic<bool> watching_down_{false};
  std::mutex down_mu_;
  std::set<std::string> ever_down_;
  std::string down_watch_error_;
  // The apiservers' own count of hosts they marked down (--metrics), at the storm's start and at the
  // report: exact where the watch samples, but lost with a replica killed.
  std::map<std::string, std::int64_t> marked_down_before_, marked_down_after_;
};

Host::Host(Sim& sim, int index)
    : sim_(sim),
      index_(index),
      api_(static_cast<std::size_t>(index)),
      short_(sim.io().get_executor()),
      ship_(sim.io().get_executor()),
      poll_(sim.io().get_executor()),
      wake_(sim.io()),
      poll_wait_(sim.io()) {
  const auto& o = sim.options();
  char name[64];
  std::snprintf(name, sizeof name, "%s-%05d", o.hostname_prefix.c_str(), index);
  hostname_ = name;
  const std::int64_t memory = HostAgent::SimulatedMemory(o.gpu_model);
  for (int g = 0; g < o.gpus_per_host; ++g)
    gpus_.push_back({g, memory, HostAgent::SimulatedUuid(hostname_, g), o.gpu_model});
}

awaitable<void> Host::Sleep(milliseconds d, net::steady_timer& on) {
  on.expires_after(d);
  boost::system::error_code ec;
  co_await on.async_wait(net::redirect_error(use_awaitable, ec));
}

milliseconds Host::RetryDelay(const Reply& r) {
  // Jittered around what the server asked for (1 s when it said nothing), so refused hosts do not
  // come back in step.
  const std::int64_t base = r.retry_after_s ? std::max(1, *r.retry_after_s) * 1000 : 1000;
  std::uniform_int_distribution<std::int64_t> jitter(base / 2, base * 3 / 2);
  return milliseconds(jitter(sim_.rng()));
}

awaitable<Reply> Host::Call(Conn& conn, Kind kind, const std::string& request, milliseconds timeout) {
  const auto t0 = Steady::now();
  Reply r = co_await conn.Call(sim_.Api(api_), request, timeout);
  sim_.Record(kind, r, t0);
  // Its apiserver is gone (a replica killed): the next call goes to the next one.
  if (r.status == 0 && sim_.api_count() > 1 && r.error.rfind("connect", 0) == 0) ++api_;
  co_return r;
}

awaitable<Reply> Host::ShortCall(Conn& own, Kind kind, const std::function<std::string()>& build, milliseconds timeout) {
  if (!sim_.pooled()) {
    const std::string request = build();
    co_return co_await Call(own, kind, request, timeout);
  }
  const std::size_t api = api_;
  Conn* conn = co_await sim_.AcquireShort(api, kind);
  if (!conn) co_return Reply{0, "", "stopping", std::nullopt};
  const std::string request = build();
  Reply r = co_await Call(*conn, kind, request, timeout);
  sim_.ReleaseShort(api, conn);
  co_return r;
}

awaitable<bool> Host::Register() {
  const auto& o = sim_.options();
  protocol::Registration reg{hostname_, o.region, o.zone, gpus_, std::string("550.54.15"), o.cuda_version,
                             hostname_, protocol::PortRange{20000, 29999}, true};
  const std::function<std::string()> build = [&] {
    return Request("POST", "/v1/agent/register", o.bootstrap_token, boost::json::serialize(protocol::ToJson(reg)));
  };
  Reply r = co_await ShortCall(short_, kRegister, build, milliseconds(30000));
  if (r.status != 200 && r.status != 201) {
    // Refused for what it sent (a bad bootstrap token, a bad field): the run cannot succeed.
    if (r.status >= 400 && r.status < 500 && r.status != 429) sim_.Fatal(hostname_ + ": registration refused: " + std::to_string(r.status) + " " + r.body);
    co_await Sleep(r.status == 0 ? milliseconds(1000) + RetryDelay(r) : RetryDelay(r), wake_);
    co_return false;
  }
  protocol::Registered reply;
  bool understood = true;
  try {
    reply = protocol::ParseRegistered(boost::json::parse(r.body));
  } catch (const std::exception& e) {
    std::cerr << "fleet-sim: " << hostname_ << ": registration answer not understood: " << e.what() << "\n";
    understood = false;
  }
  if (!understood) {
    co_await Sleep(milliseconds(2000), wake_);
    co_return false;
  }
  token_ = reply.host_token;
  last_heard_from_ = Steady::now();
  heartbeat_interval_ = milliseconds(reply.heartbeat_interval_ms);
  sample_interval_ = milliseconds(std::max<std::int64_t>(100, reply.sample_interval_ms));
  next_seq_ = std::max(next_seq_, reply.next_batch_seq);
  version_ = -1;
  if (!meter_) {
    std::vector<int> indices;
    for (const auto& g : gpus_) indices.push_back(static_cast<int>(g.index));
    meter_ = std::make_unique<Meter>(indices, sample_interval_, NowMs());
    const std::string seed = Sha256Hex(hostname_).substr(0, 16);
    sampler_ = std::make_unique<SimulatedSampler>(std::stoull(seed, nullptr, 16), gpus_,
                                                  [this](int gpu) { return meter_->Busy(gpu); });
    sim_.Registered();  // the first time
  } else {
    meter_->SetInterval(sample_interval_);
  }
  co_return true;
}

void Host::ObserveMeter() {
  std::map<int, std::string> running;
  for (const auto& [id, i] : instances_)
    if (i.state == "running")
      for (int g : i.gpus) running[g] = id;
  meter_->Observe(NowMs(), running);
}

void Host::Apply(protocol::AssignmentList list) {
  const TimeMs now = NowMs();
  std::set<std::string> listed;
  for (auto& a : list.instances) {
    listed.insert(a.id);
    const bool past_notice = a.preempt_at && *a.preempt_at <= now;
    auto it = instances_.find(a.id);
    if (a.desired_state == "running" && !past_notice) {
      if (it == instances_.end()) {
        instances_.emplace(a.id, Instance{"starting", a.gpu_indices, Steady::now() + sim_.options().boot_delay, a.preempt_at});
        sim_.Seen(a.id);
      } else {
        it->second.preempt_at = a.preempt_at;
      }
    } else if (it == instances_.end()) {
      instances_.emplace(a.id, Instance{"stopped", a.gpu_indices, {}, a.preempt_at});
    } else {
      it->second.state = "stopped";
    }
  }
  for (auto it = instances_.begin(); it != instances_.end();)
    it = listed.count(it->first) ? std::next(it) : instances_.erase(it);
  version_ = list.version;
  ObserveMeter();
  Kick();
}

bool Host::Advance() {
  bool changed = false;
  const auto now = Steady::now();
  const TimeMs wall = NowMs();
  for (auto& [id, i] : instances_) {
    if (i.state == "starting" && i.boots_at <= now) {
      i.state = "running";
      changed = true;
    }
    if (i.state != "stopped" && i.preempt_at && *i.preempt_at <= wall) {
      i.state = "stopped";
      changed = true;
    }
  }
  if (changed) ObserveMeter();
  return changed;
}

awaitable<void> Host::Poll() {
  while (!sim_.stopping() && !token_.empty()) {
    const std::string token = token_;
    const std::string target = "/v1/agent/assignments?version=" + std::to_string(version_) + "&wait=20";
    const std::string request = Request("GET", target, token, "");
    Reply r = co_await Call(poll_, kAssignments, request, milliseconds(30000));
    if (sim_.stopping()) break;
    if (r.status == 401) {
      if (token_ == token) token_.clear();
      Kick();
      break;
    }
    if (r.status != 200) {
      co_await Sleep(RetryDelay(r), poll_wait_);
      continue;
    }
    try {
      auto list = protocol::ParseAssignmentList(boost::json::parse(r.body));
      if (list.version != version_) Apply(std::move(list));
    } catch (const std::exception& e) {
      std::cerr << "fleet-sim: " << hostname_ << ": assignments not understood: " << e.what() << "\n";
    }
  }
  polling_ = false;
}

awaitable<void> Host::Heartbeat() {
  protocol::Heartbeat report{{}, "fleet-sim"};
  for (const auto& [id, i] : instances_) report.instances.push_back({id, i.state});
  const std::string token = token_;
  const std::function<std::string()> build = [&] {
    // Sent now: how long since the server last heard from this host (its registration or its
    // previous heartbeat leaving here)?
    sim_.HeartbeatGap(SinceUs(last_heard_from_));
    last_heard_from_ = Steady::now();
    return Request("POST", "/v1/agent/heartbeat", token, boost::json::serialize(protocol::ToJson(report)));
  };
  Reply r = co_await ShortCall(short_, kHeartbeat, build, milliseconds(10000));
  if (r.status == 200 && !heard_) {
    heard_ = true;
    sim_.Heard();
  }
  if (r.status == 401 && token_ == token) token_.clear();
}

awaitable<void> Host::Ship() {
  while (!outbox_.empty() && !token_.empty() && !sim_.stopping()) {
    auto& batch = outbox_.front();
    const std::string token = token_;
    const std::function<std::string()> build = [&] {
      batch.sent_at_ms = NowMs();
      return Request("POST", "/v1/agent/samples", token, boost::json::serialize(protocol::ToJson(batch)));
    };
    ++shipping_;
    const auto sent = Steady::now();
    Reply r = co_await ShortCall(ship_, kSamples, build, milliseconds(30000));
    --shipping_;
    if (r.status == 422 && protocol::RepairSampleBatch(batch, r.body).any()) continue;
    if (r.status == 200) {
      // Stored now, or before: a duplicate is a batch sent again whose first copy was stored but
      // not acknowledged (its apiserver killed mid-answer, say), so its samples count once, here.
      std::int64_t accepted = 0;
      try {
        const auto answer = protocol::ParseSamplesAnswer(boost::json::parse(r.body));
        accepted = answer.duplicate ? static_cast<std::int64_t>(batch.samples.size()) : answer.accepted;
      } catch (const std::exception&) {
      }
      sim_.SamplesStored(accepted, (NowMs() - batch.sampled_through_ms).count(), sent);
      outbox_.pop_front();
      continue;
    }
    if (r.status == 422 || r.status == 400 || r.status == 413) {
      std::cerr << "fleet-sim: " << hostname_ << ": batch " << batch.batch_seq << " refused: " << r.body << "\n";
      sim_.Refused422();
      outbox_.pop_front();
      continue;
    }
    if (r.status == 401 && token_ == token) token_.clear();
    next_ship_ = Steady::now() + RetryDelay(r);
    break;
  }
}

awaitable<void> Host::ShipLoop() {
  co_await Ship();
  ship_loop_ = false;
  wake_.cancel();  // Main looks again: a batch sampled meanwhile, or a refusal's retry time
}

awaitable<void> Host::Main() {
  const auto& o = sim_.options();
  if (o.ramp.count() > 0) co_await Sleep(milliseconds(o.ramp.count() * index_ / std::max(1, o.hosts)), wake_);
  Steady::time_point next_heartbeat{}, next_sample{};
  while (!sim_.stopping()) {
    if (token_.empty()) {
      if (!co_await Register()) continue;
      next_heartbeat = Steady::now();
      // Hosts tick out of step, as hosts started at different times do.
      std::uniform_int_distribution<std::int64_t> phase(sample_interval_.count() / 2, sample_interval_.count());
      next_sample = Steady::now() + milliseconds(phase(sim_.rng()));
      if (!polling_) {
        polling_ = true;
        net::co_spawn(sim_.io(), Poll(), net::detached);
      }
    }
    if (Advance()) kicked_ = true;
    auto now = Steady::now();
    if (kicked_ || now >= next_heartbeat) {
      kicked_ = false;
      co_await Heartbeat();
      // Refused: again soon, not a whole interval later.
      next_heartbeat = Steady::now() + (heard_ ? heartbeat_interval_ : milliseconds(1000));
      continue;
    }
    if (now >= next_sample && sim_.sampling()) {
      const TimeMs t = NowMs();
      auto samples = meter_->Tick(t, sampler_->Read(t));
      if (!samples.empty()) outbox_.push_back({next_seq_++, t, std::nullopt, std::move(samples)});
      next_sample += sample_interval_;
      if (next_sample < now) next_sample = now + sample_interval_;
      next_ship_ = {};
    }
    if (!outbox_.empty() && !ship_loop_ && Steady::now() >= next_ship_) {
      ship_loop_ = true;
      net::co_spawn(sim_.io(), ShipLoop(), net::detached);
    }
    // Once sampling stops (the run is draining), the next sample is no reason to wake.
    auto until = sim_.sampling() ? std::min(next_heartbeat, next_sample) : next_heartbeat;
    if (!outbox_.empty() && !ship_loop_) until = std::min(until, next_ship_);
    for (const auto& [id, i] : instances_)
      if (i.state == "starting") until = std::min(until, i.boots_at);
    if (kicked_ || token_.empty()) continue;
    wake_.expires_at(until);
    boost::system::error_code ec;
    co_await wake_.async_wait(net::redirect_error(use_awaitable, ec));
  }
}

// ---- the fleet, the tenant and the report ---------------------------------------------------

void Sim::LaunchSeen(const std::string& id, Steady::time_point sent, Steady::time_point seen) {
  if (measuring_ && sent >= window_start_)
    assignment_ms_.push_back(static_cast<std::uint32_t>(std::chrono::duration_cast<milliseconds>(seen - sent).count()));
  net::co_spawn(io_, TerminateLater(id), net::detached);
}

void Sim::Seen(const std::string& id) {
  if (auto it = launched_.find(id); it != launched_.end()) {
    LaunchSeen(id, it->second, Steady::now());
    launched_.erase(it);
  } else if (o_.launch_rate > 0) {
    seen_early_[id] = Steady::now();
  }
}

awaitable<void> Sim::LaunchOne() {
  const std::string body = "{\"instance_type\":\"" + o_.instance_type + "\",\"region\":\"" + o_.region +
                           "\",\"market\":\"on_demand\"}";
  const std::string key = "fleet-sim-" + std::to_string(rng_());
  const auto t0 = Steady::now();
  const std::string request = Request("POST", "/v1/instances", o_.tenant_key, body, "Idempotency-Key: " + key + "\r\n");
  Reply r = co_await TenantCall(kLaunch, request);
  if (r.status != 201 && r.status != 200) {
    std::cerr << "fleet-sim: launch: " << r.status << " " << r.body << r.error << "\n";
    co_return;
  }
  std::string id;
  try {
    id = std::string(boost::json::parse(r.body).at("id").as_string());
  } catch (const std::exception&) {
    co_return;
  }
  if (auto it = seen_early_.find(id); it != seen_early_.end()) {
    LaunchSeen(id, t0, it->second);
    seen_early_.erase(it);
  } else {
    launched_[id] = t0;
  }
}

awaitable<void> Sim::TerminateLater(std::string id) {
  co_await Sleep(o_.launch_hold);
  if (stopping_) co_return;
  const std::string request = Request("DELETE", "/v1/instances/" + id, o_.tenant_key, "");
  co_await TenantCall(kTerminate, request);
}

awaitable<void> Sim::Launcher() {
  const auto gap = std::chrono::duration_cast<milliseconds>(std::chrono::duration<double>(1.0 / o_.launch_rate));
  auto next = Steady::now();
  while (measuring_ && !stopping_) {
    net::co_spawn(io_, LaunchOne(), net::detached);
    next += gap;
    net::steady_timer t(io_);
    t.expires_at(next);
    boost::system::error_code ec;
    co_await t.async_wait(net::redirect_error(use_awaitable, ec));
  }
}

// The sum over every label set of counter `name` on `url`'s /metrics (http://HOST:PORT, an
// apiserver's admin listener); nullopt when it cannot be read within 5 s (a replica killed, a server
// that stopped answering).
std::optional<std::int64_t> ScrapeCounter(const std::string& url, const std::string& name) {
  try {
    const auto r = HttpClient(url, "spillway-fleet-sim").Call("GET", "/metrics", "", "", std::chrono::seconds(5));
    if (r.status != 200) return std::nullopt;
    std::int64_t sum = 0;
    std::istringstream lines(r.body);
    for (std::string line; std::getline(lines, line);)
      if (line.rfind(name, 0) == 0 && (line.size() > name.size() && (line[name.size()] == '{' || line[name.size()] == ' ')))
        sum += static_cast<std::int64_t>(std::stod(line.substr(line.rfind(' ') + 1)));
    return sum;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Hosts marked down by the apiservers given as --metrics: their spillway_hosts_marked_down_total
// now (each that answers), keyed by URL.
std::map<std::string, std::int64_t> MarkedDown(const std::vector<std::string>& urls) {
  std::map<std::string, std::int64_t> out;
  for (const auto& url : urls)
    if (const auto n = ScrapeCounter(url, "spillway_hosts_marked_down_total")) out[url] = *n;
  return out;
}

awaitable<std::map<std::string, std::int64_t>> Sim::Ready(std::future<std::map<std::string, std::int64_t>> read) {
  while (read.wait_for(std::chrono::seconds(0)) != std::future_status::ready) co_await Sleep(milliseconds(20));
  co_return read.get();
}

std::optional<std::int64_t> Sim::Wal() {
  if (o_.pg_dsn.empty()) return std::nullopt;
  try {
    pqxx::connection c(o_.pg_dsn);
    pqxx::nontransaction tx(c);
    return tx.exec1("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")[0].as<std::int64_t>();
  } catch (const std::exception& e) {
    std::cerr << "fleet-sim: cannot read the WAL position: " << e.what() << "\n";
    return std::nullopt;
  }
}

void Sim::WatchDownHosts() {
  try {
    pqxx::connection c(o_.pg_dsn);
    const std::string like = o_.hostname_prefix + "-%";
    while (watching_down_) {
      {
        pqxx::nontransaction tx(c);
        const auto rows = tx.exec_params("SELECT id FROM hosts WHERE health = 'down' AND hostname LIKE $1", like);
        std::lock_guard lk(down_mu_);
        for (const auto& r : rows) ever_down_.insert(r[0].as<std::string>());
      }
      for (int i = 0; i < 10 && watching_down_; ++i) std::this_thread::sleep_for(milliseconds(100));
    }
  } catch (const std::exception& e) {
    std::lock_guard lk(down_mu_);
    down_watch_error_ = e.what();
  }
}

void Sim::Stop() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& h : hosts_) h->CloseAll();
  for (auto& c : tenant_conns_) c->Close();
  for (auto& p : pools_) {
    for (auto& c : p.conns) c->Close();
    for (auto* queue : {&p.urgent, &p.waiters})
      for (auto& w : *queue) w->timer.cancel();
  }
}

awaitable<void> Sim::StatusLines() {
  const auto start = Steady::now();
  bool said_converged = false;
  while (!stopping_) {
    co_await Sleep(heard_ == static_cast<int>(hosts_.size()) ? o_.status_every : milliseconds(1000));
    const double t = std::chrono::duration<double>(Steady::now() - start).count();
    if (!said_converged && heard_ == static_cast<int>(hosts_.size())) {
      said_converged = true;
      std::cout << "fleet-sim: all " << hosts_.size() << " hosts registered and heard after " << t << " s" << std::endl;
    } else if (said_converged || static_cast<int>(t) % 10 == 0) {
      std::cout << "fleet-sim: " << t << " s: " << registered_ << " registered, " << heard_ << " heard, "
                << samples_acked_ << " samples stored" << std::endl;
    }
  }
}

awaitable<void> Sim::Control() {
  const auto start = Steady::now();
  if (!o_.pg_dsn.empty()) {
    watching_down_ = true;
    down_watch_ = std::thread([this] { WatchDownHosts(); });
  }
  // Read from the storm's start on, beside it (one apiserver that does not answer takes 5 s).
  auto marked_down_before = std::async(std::launch::async, MarkedDown, o_.metrics);
  const int n = static_cast<int>(hosts_.size());
  int last_heard = -1;
  auto last_print = start;
  while (heard_ < n && Steady::now() - start < o_.converge_limit && !stopping_) {
    co_await Sleep(milliseconds(100));
    if (Steady::now() - last_print >= std::chrono::seconds(5) && heard_ != last_heard) {
      last_print = Steady::now();
      last_heard = heard_;
      std::cout << "fleet-sim: " << std::chrono::duration<double>(Steady::now() - start).count() << " s: "
                << registered_ << " registered, " << heard_ << " heard" << std::endl;
    }
  }
  const double converge_s = std::chrono::duration<double>(Steady::now() - start).count();
  const bool converged = heard_ == n;
  std::cout << "fleet-sim: " << (converged ? "converged" : "NOT converged") << " after " << converge_s << " s ("
            << registered_ << " registered, " << heard_ << " heard of " << n << ")" << std::endl;
  if (converged && !stopping_) {
    wal_before_ = Wal();  // blocks this thread a moment: before the window opens
    for (auto& k : kinds_) k = KindStats{};
    window_start_ = Steady::now();
    self_before_ = SelfCpuUs();
    for (const auto& [name, pid] : o_.watch) proc_before_[name] = SampleProcess(pid, name.rfind("postgres", 0) == 0);
    measuring_ = true;
    if (o_.launch_rate > 0 && !o_.tenant_key.empty()) net::co_spawn(io_, Launcher(), net::detached);
    co_await Sleep(o_.steady);
    measuring_ = false;
    window_end_ = Steady::now();
    for (int k = 0; k < kKinds; ++k) window_kinds_[k] = kinds_[k];
    self_after_ = SelfCpuUs();
    for (const auto& [name, pid] : o_.watch) proc_after_[name] = SampleProcess(pid, name.rfind("postgres", 0) == 0);
    wal_after_ = Wal();
    // Let the last launches be seen and terminated; then stop sampling and let every batch land
    // (or be given up) before counting what was stored against what was acknowledged.
    co_await Sleep(std::max(milliseconds(2000), o_.launch_hold + milliseconds(2000)));
    sampling_ = false;
    const auto drain_until = Steady::now() + std::chrono::seconds(60);
    while (Steady::now() < drain_until &&
           !std::all_of(hosts_.begin(), hosts_.end(), [](const auto& h) { return h->quiet(); }))
      co_await Sleep(milliseconds(200));
  }
  StopWatchingDown();
  auto marked_down_after = std::async(std::launch::async, MarkedDown, o_.metrics);
  marked_down_before_ = co_await Ready(std::move(marked_down_before));
  marked_down_after_ = co_await Ready(std::move(marked_down_after));
  Report(converge_s, converged);
  Stop();
  if (o_.close_and_wait.count() > 0) {
    co_await Sleep(o_.close_and_wait);
    std::cout << "after closing every connection and " << o_.close_and_wait.count() / 1000 << " s:";
    for (const auto& [name, pid] : o_.watch)
      if (const auto kb = RssKb(pid); name.rfind("postgres", 0) != 0 && kb > 0)
        std::cout << " " << name << " RSS " << kb / 1024.0 << " MiB";
    std::cout << std::endl;
  }
  io_.stop();
}

void Sim::Report(double converge_s, bool converged) {
  const int n = static_cast<int>(hosts_.size());
  const double window = std::chrono::duration<double>(window_end_ - window_start_).count();
  boost::json::object j{{"hosts", n},
                        {"gpus_per_host", o_.gpus_per_host},
                        {"apiservers", apis_.size()},
                        {"converged", converged},
                        {"converge_seconds", converge_s},
                        {"steady_seconds", window}};
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(1);
  out << "\n== fleet-sim: " << n << " hosts x " << o_.gpus_per_host << " GPUs, " << apis_.size() << " apiserver(s) ==\n";
  out << "storm: " << (converged ? "converged" : "NOT converged") << " in " << converge_s << " s\n";
  out << "  longest a host went unheard, registration or heartbeat to the next heartbeat sent (whole run): "
      << static_cast<double>(max_heartbeat_gap_us_) / 1e6 << " s\n";
  j["heartbeat_gap_max_seconds"] = static_cast<double>(max_heartbeat_gap_us_) / 1e6;
  if (pooled()) {  // the simulator's own queue, not the server's: it should stay short for heartbeats
    boost::json::object waits;
    out << "  longest wait for a shared connection (whole run):";
    for (int k : {kHeartbeat, kRegister, kSamples}) {
      out << " " << kKindNames[k] << " " << static_cast<double>(max_wait_us_[k]) / 1e3 << " ms";
      waits[kKindNames[k]] = static_cast<double>(max_wait_us_[k]) / 1e3;
    }
    out << "\n";
    j["shared_connection_wait_max_ms"] = std::move(waits);
  }
  if (window <= 0) {
    std::cout << out.str();
    exit_code_ = converged ? 0 : 1;
    return;
  }
  std::int64_t calls = 0, unavailable = 0, unanswered = 0;
  boost::json::object kinds;
  out << "steady " << window << " s:\n";
  out << "  call          calls/s   p50 ms   p99 ms   max ms    503   other  no-answer\n";
  for (int k = 0; k < kKinds; ++k) {
    const auto& s = window_kinds_[k];
    if (s.calls == 0) continue;
    calls += s.calls;
    unavailable += s.unavailable;
    unanswered += s.unanswered;
    const auto p = PercentilesOf(s.latency_us, 1e-3);
    char line[200];
    std::snprintf(line, sizeof line, "  %-12s %8.1f %8.2f %8.2f %8.1f %6lld %7lld %10lld\n", kKindNames[k],
                  static_cast<double>(s.calls) / window, p.p50, p.p99, p.max, static_cast<long long>(s.unavailable),
                  static_cast<long long>(s.other), static_cast<long long>(s.unanswered));
    out << line;
    kinds[kKindNames[k]] = {{"calls", s.calls}, {"per_second", s.calls / window}, {"p50_ms", p.p50}, {"p99_ms", p.p99},
                            {"max_ms", p.max}, {"unavailable", s.unavailable}, {"other", s.other},
                            {"unanswered", s.unanswered}};
  }
  j["calls"] = std::move(kinds);
  const double share503 = calls > 0 ? 100.0 * static_cast<double>(unavailable) / static_cast<double>(calls) : 0;
  const auto assign = PercentilesOf(assignment_ms_, 1.0);
  const auto lag = PercentilesOf(ingest_lag_ms_, 1.0);
  out.precision(2);
  out << "  503 share: " << share503 << " % (" << unavailable << " of " << calls << "), unanswered " << unanswered << "\n";
  out << "  launch -> host sees it: p50 " << assign.p50 << " ms, p99 " << assign.p99 << " ms, max " << assign.max
      << " ms (" << assignment_ms_.size() << " launches; " << launched_.size() << " not seen yet)\n";
  out << "  ingest lag (sampled -> stored): p50 " << lag.p50 << " ms, p99 " << lag.p99 << " ms, max " << lag.max << " ms\n";
  j["share_503_pct"] = share503;
  j["assignment_ms"] = {{"p50", assign.p50}, {"p99", assign.p99}, {"max", assign.max}, {"count", assignment_ms_.size()}};
  j["ingest_lag_ms"] = {{"p50", lag.p50}, {"p99", lag.p99}, {"max", lag.max}};
  const double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
  boost::json::object procs;
  const double self_cores = static_cast<double>(self_after_ - self_before_) / 1e6 / window;
  out << "  cores: fleet-sim " << self_cores;
  procs["fleet-sim"] = {{"cores", self_cores}};
  for (const auto& [name, pid] : o_.watch) {
    if (!proc_after_[name].alive) {  // killed in the window: its CPU time went with it
      out << ", " << name << " gone";
      procs[name] = {{"gone", true}};
      continue;
    }
    const double cores = static_cast<double>(proc_after_[name].ticks - proc_before_[name].ticks) / hz / window;
    out << ", " << name << " " << cores;
    boost::json::object p{{"cores", cores}};
    if (name.rfind("postgres", 0) != 0) p["rss_mib"] = static_cast<double>(proc_after_[name].rss_kb) / 1024.0;
    procs[name] = std::move(p);
  }
  out << "\n";
  for (const auto& [name, pid] : o_.watch)
    if (name.rfind("postgres", 0) != 0 && proc_after_[name].alive)
      out << "  " << name << " RSS " << static_cast<double>(proc_after_[name].rss_kb) / 1024.0 << " MiB\n";
  j["processes"] = std::move(procs);
  if (wal_before_ && wal_after_) {
    const double wal = static_cast<double>(*wal_after_ - *wal_before_) / window;
    out << "  WAL " << wal / 1024.0 / 1024.0 << " MiB/s\n";
    j["wal_bytes_per_second"] = wal;
  }
  bool bad = !converged || share503 > 0;
  if (!o_.metrics.empty()) {
    std::int64_t marked = 0;
    std::vector<std::string> unread;
    for (const auto& url : o_.metrics) {
      const auto before = marked_down_before_.find(url), after = marked_down_after_.find(url);
      if (before == marked_down_before_.end() || after == marked_down_after_.end()) unread.push_back(url);
      else marked += after->second - before->second;
    }
    out << "  hosts marked down by the apiservers (spillway_hosts_marked_down_total): " << marked;
    for (const auto& url : unread) out << " (" << url << " not read)";
    out << "\n";
    j["hosts_marked_down"] = marked;
    bad = bad || marked > 0;
  }
  if (!o_.pg_dsn.empty()) {
    try {
      pqxx::connection c(o_.pg_dsn);
      pqxx::nontransaction tx(c);
      // This run's hosts: named PREFIX-NNNNN.
      const std::string like = o_.hostname_prefix + "-%";
      const auto down = tx.exec_params(
          "SELECT count(*) FILTER (WHERE health = 'down'), count(*) FROM hosts WHERE hostname LIKE $1", like)[0];
      const auto failed = tx.exec_params(
          "SELECT count(*) FROM instances i JOIN hosts h ON h.id = i.host_id WHERE i.state = 'failed' AND h.hostname LIKE $1",
          like)[0];
      const auto stored = tx.exec_params(
          "SELECT count(*) FROM usage_samples s JOIN hosts h ON h.id = s.host_id WHERE h.hostname LIKE $1", like)[0];
      const auto hosts_down = down[0].as<std::int64_t>(), failed_n = failed[0].as<std::int64_t>();
      const auto stored_n = stored[0].as<std::int64_t>();
      std::int64_t ever_down = 0;
      std::string watch_error;
      {
        std::lock_guard lk(down_mu_);
        ever_down = static_cast<std::int64_t>(ever_down_.size());
        watch_error = down_watch_error_;
      }
      out << "  hosts down: " << hosts_down << " of " << down[1].as<std::int64_t>() << " at the end, " << ever_down
          << " seen down at some moment of the run"
          << (watch_error.empty() ? "" : " (the watch stopped: " + watch_error + ")") << ", instances failed: " << failed_n
          << "\n  samples stored: " << stored_n << ", acknowledged to hosts: " << samples_acked_
          << (stored_n == samples_acked_ ? " (equal)" : " (DIFFERENT)") << ", batches refused: " << refused_batches_ << "\n";
      j["hosts_down"] = hosts_down;
      j["hosts_seen_down"] = ever_down;
      j["instances_failed"] = failed_n;
      j["samples_stored"] = stored_n;
      j["samples_acknowledged"] = samples_acked_;
      bad = bad || hosts_down > 0 || ever_down > 0 || failed_n > 0 || stored_n != samples_acked_ || refused_batches_ > 0;
    } catch (const std::exception& e) {
      out << "  (PostgreSQL not read: " << e.what() << ")\n";
      bad = true;
    }
  }
  std::cout << out.str() << std::flush;
  if (!o_.report_json.empty()) {
    std::ofstream f(o_.report_json);
    f << boost::json::serialize(j) << "\n";
  }
  exit_code_ = bad ? 1 : 0;
}

int Sim::Run() {
  for (const auto& api : o_.apis) {
    const std::string prefix = "http://";
    if (api.rfind(prefix, 0) != 0) throw std::invalid_argument("--api must be http://HOST:PORT (got " + api + ")");
    const std::string rest = api.substr(prefix.size());
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("--api must name a port (got " + api + ")");
    tcp::resolver resolver(io_);
    const auto results = resolver.resolve(rest.substr(0, colon), rest.substr(colon + 1, rest.find('/', colon) - colon - 1));
    apis_.push_back(results.begin()->endpoint());
  }
  if (o_.short_connections > 0) {
    pools_.resize(apis_.size());
    for (auto& p : pools_)
      for (int i = 0; i < o_.short_connections; ++i) {
        p.conns.push_back(std::make_unique<Conn>(io_.get_executor()));
        p.free.push_back(p.conns.back().get());
      }
  }
  for (int i = 0; i < o_.hosts; ++i) hosts_.push_back(std::make_unique<Host>(*this, i));
  for (auto& h : hosts_) net::co_spawn(io_, h->Main(), net::detached);
  net::signal_set signals(io_, SIGINT, SIGTERM);
  signals.async_wait([this](const boost::system::error_code& ec, int) {
    if (ec) return;
    std::cout << "fleet-sim: stopping" << std::endl;
    Stop();
    io_.stop();
  });
  if (o_.steady.count() > 0) net::co_spawn(io_, Control(), net::detached);
  else net::co_spawn(io_, StatusLines(), net::detached);
  io_.run();
  StopWatchingDown();  // when stopped before the report (by a signal, say)
  return exit_code_;
}

}  // namespace

int RunFleetSim(const FleetSimOptions& options) {
  net::io_context io(1);
  Sim sim(io, options);
  return sim.Run();
}

}  // namespace spillway::agent
