#include "tests/support/test_support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "core/migrate.hpp"
#include "core/secrets.hpp"

extern char** environ;

namespace spillway::test {

std::string BaseDsn() {
  const char* dsn = std::getenv("SPILLWAY_TEST_DSN");
  if (!dsn || !*dsn) {
    ADD_FAILURE() << "SPILLWAY_TEST_DSN is not set: run the tests with ./scripts/test";
    throw std::runtime_error("SPILLWAY_TEST_DSN is not set");
  }
  return dsn;
}

namespace {
std::string RandomSuffix() {
  static std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s;
  for (int i = 0; i < 10; ++i) s += kChars[rng() % 36];
  return s;
}
}  // namespace

TestDb::TestDb(bool migrate) {
  admin_dsn_ = BaseDsn();
  name_ = "spw_test_" + RandomSuffix();
  dsn_ = admin_dsn_ + " dbname=" + name_;  // libpq: the last dbname wins
  {
    // A database name is an identifier, which SQL cannot take as a parameter: it is generated
    // here (spw_test_ and random letters) and quoted.
    pqxx::connection admin(admin_dsn_);
    const std::string create = "CREATE DATABASE " + admin.quote_name(name_);
    pqxx::nontransaction(admin).exec(create);
  }
  if (migrate) {
    pqxx::connection c(dsn_);
    ApplyMigrations(c, EmbeddedMigrations());
  }
}

TestDb::~TestDb() {
  try {
    pqxx::connection admin(admin_dsn_);
    const std::string drop = "DROP DATABASE IF EXISTS " + admin.quote_name(name_) + " WITH (FORCE)";
    pqxx::nontransaction(admin).exec(drop);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dropping %s: %s\n", name_.c_str(), e.what());
  }
}

std::unique_ptr<pqxx::connection> TestDb::Connect() const { return std::make_unique<pqxx::connection>(dsn_); }

// ---------------------------------------------------------------------------------------------
HttpConn::HttpConn(int port, int tls_min_version, int tls_max_version, const std::string& tls12_ciphers) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd_);
    fd_ = -1;
    return;
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (tls_min_version) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_security_level(ctx, 0);  // let the test offer old versions, to see them refused
    SSL_CTX_set_min_proto_version(ctx, tls_min_version);
    SSL_CTX_set_max_proto_version(ctx, tls_max_version ? tls_max_version : tls_min_version);
    if (!tls12_ciphers.empty()) SSL_CTX_set_cipher_list(ctx, tls12_ciphers.c_str());
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd_);
    handshake_ok_ = SSL_connect(ssl) == 1;
    ssl_ctx_ = ctx;
    tls_ = ssl;
  }
}

HttpConn::~HttpConn() {
  if (tls_) SSL_free(static_cast<SSL*>(tls_));
  if (ssl_ctx_) SSL_CTX_free(static_cast<SSL_CTX*>(ssl_ctx_));
  if (fd_ >= 0) ::close(fd_);
}

void HttpConn::SendRaw(const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    const int n = tls_ ? SSL_write(static_cast<SSL*>(tls_), bytes.data() + off, static_cast<int>(bytes.size() - off))
                       : static_cast<int>(::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL));
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

int HttpConn::ReadSome(char* buf, int n, std::chrono::milliseconds timeout) {
  if (tls_ && SSL_pending(static_cast<SSL*>(tls_)) > 0) return SSL_read(static_cast<SSL*>(tls_), buf, n);
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return -2;  // timeout
  return tls_ ? SSL_read(static_cast<SSL*>(tls_), buf, n) : static_cast<int>(::recv(fd_, buf, n, 0));
}

std::optional<HttpResponse> HttpConn::Read(std::chrono::milliseconds timeout, bool head_request) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto remaining = [&] {
    return std::max<std::chrono::milliseconds>(
        std::chrono::milliseconds(0),
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
  };
  char buf[16384];
  size_t header_end;
  while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
    const int n = ReadSome(buf, sizeof buf, remaining());
    if (n <= 0) return std::nullopt;
    buffer_.append(buf, static_cast<size_t>(n));
  }
  HttpResponse r;
  std::istringstream head(buffer_.substr(0, header_end));
  std::string line;
  std::getline(head, line);
  if (line.size() < 12) return std::nullopt;
  r.status = std::stoi(line.substr(9, 3));
  size_t content_length = 0;
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    r.headers[name] = value;
    if (name == "content-length") content_length = std::stoul(value);
  }
  buffer_.erase(0, header_end + 4);
  if (head_request) return r;  // a response to HEAD has no body, whatever its Content-Length says
  const auto more = [&] {
    const int n = ReadSome(buf, sizeof buf, remaining());
    if (n <= 0) return false;
    buffer_.append(buf, static_cast<size_t>(n));
    return true;
  };
  if (r.headers["transfer-encoding"] == "chunked") {
    // Chunks until the last (size 0) one: a body cut off before it (the server failed midway, or
    // the connection closed) is no response at all, as a real client would see it.
    for (;;) {
      size_t eol;
      while ((eol = buffer_.find("\r\n")) == std::string::npos)
        if (!more()) return std::nullopt;
      const size_t size = std::stoul(buffer_.substr(0, eol), nullptr, 16);
      while (buffer_.size() < eol + 2 + size + 2)
        if (!more()) return std::nullopt;
      r.body.append(buffer_, eol + 2, size);
      buffer_.erase(0, eol + 2 + size + 2);
      if (size == 0) return r;
    }
  }
  while (buffer_.size() < content_length) {
    const int n = ReadSome(buf, sizeof buf, remaining());
    if (n <= 0) return std::nullopt;
    buffer_.append(buf, static_cast<size_t>(n));
  }
  r.body = buffer_.substr(0, content_length);
  buffer_.erase(0, content_length);
  return r;
}

bool HttpConn::ClosedByPeer(std::chrono::milliseconds timeout) {
  char buf[1024];
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const int n = ReadSome(buf, sizeof buf, std::chrono::milliseconds(100));
    if (n == 0 || (n < 0 && n != -2)) return true;
  }
  return false;
}

HttpResponse HttpConn::Call(const std::string& method, const std::string& target, const std::string& key,
                            const std::string& body, std::map<std::string, std::string> headers) {
  std::string req = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n";
  if (!key.empty()) headers.emplace("Authorization", "Bearer " + key);
  if (!body.empty()) headers.emplace("Content-Type", "application/json");
  for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
  if (!body.empty() || method == "POST" || method == "PATCH" || method == "PUT")
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  SendRaw(req);
  auto r = Read();
  if (!r) return HttpResponse{};
  return *r;
}

HttpResponse Http(int port, const std::string& method, const std::string& target, const std::string& key,
                  const std::string& body, std::map<std::string, std::string> headers) {
  HttpConn c(port);
  if (!c.ok()) return HttpResponse{};
  return c.Call(method, target, key, body, std::move(headers));
}

int FreePort() {
  // The kernel may hand the same free port out twice in a row: never give a port out twice.
  static std::mutex mu;
  static std::set<int> given;
  for (;;) {
    const int port = [] {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      socklen_t len = sizeof addr;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
      ::close(fd);
      return static_cast<int>(ntohs(addr.sin_port));
    }();
    std::lock_guard lk(mu);
    if (given.insert(port).second) return port;
  }
}

// ---------------------------------------------------------------------------------------------
namespace {
std::vector<std::string> MergedEnv(const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string s(*e);
    const auto eq = s.find('=');
    if (eq != std::string::npos) env[s.substr(0, eq)] = s.substr(eq + 1);
  }
  for (const auto& [k, v] : extra) env[k] = v;
  std::vector<std::string> out;
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

int Spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env, int out_fd,
          int err_fd) {
  auto envs = MergedEnv(env);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // A test binary that aborts (a failed ASSERT in a helper thread, a sanitizer report) never runs
    // the destructors that stop what it started: the kernel stops it instead. Processes are started
    // from the test's own thread, which lives as long as the test (PDEATHSIG follows the thread).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) std::_Exit(127);
    if (out_fd >= 0) ::dup2(out_fd, 1);
    if (err_fd >= 0) ::dup2(err_fd, 2);
    std::vector<char*> a, e;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    for (const auto& s : envs) e.push_back(const_cast<char*>(s.c_str()));
    e.push_back(nullptr);
    ::execve(a[0], a.data(), e.data());
    std::_Exit(127);
  }
  return pid;
}
}  // namespace

Process::Process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
  char tmpl[] = "/tmp/spillway-proc-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  log_path_ = tmpl;
  pid_ = Spawn(argv, env, fd, fd);
  ::close(fd);
}

Process::~Process() {
  if (!exited_) Stop(SIGKILL, std::chrono::seconds(5));
  ::unlink(log_path_.c_str());
}

bool Process::Running() {
  if (exited_) return false;
  int status;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    exited_ = true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

int Process::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return exit_code_;
}

int Process::Stop(int sig, std::chrono::milliseconds timeout) {
  if (!Running()) return exit_code_;
  ::kill(pid_, sig);
  const int rc = Wait(timeout);
  if (rc == -1) {
    ::kill(pid_, SIGKILL);
    Wait(std::chrono::seconds(5));
    return -1;
  }
  return rc;
}

std::string Process::Stderr() const {
  std::ifstream f(log_path_);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void ExecSql(pqxx::connection& conn, const std::string& sql) {
  pqxx::work tx(conn);
  tx.exec(sql);
  tx.commit();
}

std::string SqlValue(pqxx::connection& conn, const std::string& sql) {
  pqxx::nontransaction tx(conn);
  const auto r = tx.exec(sql);
  return r.empty() || r[0][0].is_null() ? "" : r[0][0].as<std::string>();
}

int RunCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
               std::string* out) {
  Process p(argv, env);
  const int rc = p.Wait(std::chrono::seconds(120));
  if (out) *out = p.Stderr();
  return rc;
}

bool MakeLocalhostCertificate(const std::string& dir, std::string* out) {
  return RunCommand({"/bin/sh", "-c",
                     "mkdir -p " + dir + " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                     "-days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout " + dir +
                         "/key.pem -out " + dir + "/cert.pem"},
                    {}, out) == 0;
}

std::map<std::string, std::string> TlsListenerEnv(const std::string& dir, int port) {
  return {{"SPILLWAY_TLS_ENABLED", "true"},
          {"SPILLWAY_TLS_LISTEN", "127.0.0.1:" + std::to_string(port)},
          {"SPILLWAY_TLS_CERT_FILE", dir + "/cert.pem"},
          {"SPILLWAY_TLS_KEY_FILE", dir + "/key.pem"}};
}

std::string ApiServerBinary() { return SPILLWAY_APISERVER_BIN; }
std::string AgentBinary() { return SPILLWAY_AGENT_BIN; }
std::string FleetSimBinary() { return SPILLWAY_FLEET_SIM_BIN; }

bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

const std::string& TestSecretsKeyFile() {
  static const std::string path = [] {
    std::string p = "/tmp/spillway-test-secrets-" + std::to_string(::getpid()) + ".key";
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) throw std::runtime_error("cannot create " + p);
    const std::string line = SecretBox::NewKeyLine("test1");
    const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::close(fd);
    if (!ok) throw std::runtime_error("cannot write " + p);
    std::atexit([] { ::unlink(TestSecretsKeyFile().c_str()); });
    return p;
  }();
  return path;
}

ApiServer::ApiServer(const std::string& dsn, std::map<std::string, std::string> env) : env_(std::move(env)) {
  env_["SPILLWAY_DATABASE_URL"] = dsn;
  env_.emplace("SPILLWAY_SECRETS_KEY_FILE", TestSecretsKeyFile());
  env_.emplace("SPILLWAY_DATABASE_POOL_SIZE", "4");
  Spawn();
}

void ApiServer::Spawn() {
  port_ = FreePort();
  admin_port_ = FreePort();
  env_["SPILLWAY_LISTEN"] = "127.0.0.1:" + std::to_string(port_);
  env_["SPILLWAY_ADMIN_LISTEN"] = "127.0.0.1:" + std::to_string(admin_port_);
  process_ = std::make_unique<Process>(std::vector<std::string>{ApiServerBinary(), "serve"}, env_);
}

void ApiServer::Restart() {
  if (process_->Running()) process_->Stop(SIGKILL);
  process_ = std::make_unique<Process>(std::vector<std::string>{ApiServerBinary(), "serve"}, env_);
}

ApiServer::~ApiServer() {
  if (process_->Running()) process_->Stop(SIGTERM);
}

bool ApiServer::WaitReady(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int respawns = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!process_->Running()) {
      // Another test process took the same free port first: try other ports.
      if (process_->Stderr().find("cannot listen") == std::string::npos || ++respawns > 3) return false;
      Spawn();
      continue;
    }
    if (Http(admin_port_, "GET", "/readyz").status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::string BootstrapAdmin(const std::string& dsn) {
  int fds[2];
  if (::pipe(fds) != 0) return "";
  const int pid = Spawn({ApiServerBinary(), "bootstrap-admin"}, {{"SPILLWAY_DATABASE_URL", dsn}}, fds[1], -1);
  ::close(fds[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "bootstrap-admin failed";
  return out;
}

namespace {
int Sh(const std::string& cmd) {
  std::string out;
  const int rc = RunCommand({"/bin/sh", "-c", cmd}, {}, &out);
  if (rc != 0) std::fprintf(stderr, "%s: %s\n", cmd.c_str(), out.c_str());
  return rc;
}
std::string ShellEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\' || c == '$') out += '\\';
    out += c;
  }
  return out;
}
}  // namespace

OwnCluster::OwnCluster(bool tls) : tls_(tls) {
  const char* bin = std::getenv("SPILLWAY_TEST_PG_BIN");
  bin_ = bin && *bin ? bin : "/usr/lib/postgresql/15/bin";
  char tmpl[] = "/tmp/spw-cluster-XXXXXX";
  dir_ = ::mkdtemp(tmpl);
  port_ = FreePort();
  Sh("chmod 755 " + dir_ + " && mkdir -p " + dir_ + "/data " + dir_ + "/run" +
     (::geteuid() == 0 ? " && chown postgres:postgres " + dir_ + "/data " + dir_ + "/run" : ""));
  ok_ = AsPg(bin_ + "/initdb -D " + dir_ + "/data -U postgres --auth=trust >/dev/null") == 0;
  if (ok_ && tls_) {
    ok_ = AsPg("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost "
               "-keyout " + dir_ + "/data/server.key -out " + dir_ + "/data/server.crt >/dev/null 2>&1 && chmod 600 " +
               dir_ + "/data/server.key") == 0;
  }
  ok_ = ok_ && Start();
}

OwnCluster::~OwnCluster() {
  Stop();
  Sh("rm -rf " + dir_);
}

std::string OwnCluster::dsn() const {
  return "host=" + dir_ + "/run port=" + std::to_string(port_) + " user=postgres dbname=postgres";
}

std::string OwnCluster::tls_dsn() const {
  return "host=127.0.0.1 port=" + std::to_string(port_) + " user=postgres dbname=postgres sslmode=require";
}

bool OwnCluster::Start() {
  const std::string listen = tls_ ? "-c listen_addresses='127.0.0.1' -c ssl=on " : "-c listen_addresses='' ";
  return AsPg(bin_ + "/pg_ctl -D " + dir_ + "/data -w -l " + dir_ + "/data/log -o \"" + listen +
              "-c unix_socket_directories='" + dir_ + "/run' -p " + std::to_string(port_) +
              " -c fsync=off\" start >/dev/null") == 0;
}

bool OwnCluster::Stop() {
  // Two minutes, not pg_ctl's default one: on a loaded 2-core machine a stop once took longer. When
  // it still fails, the server's own log says what it waited for.
  if (AsPg(bin_ + "/pg_ctl -D " + dir_ + "/data -m fast -w -t 120 stop >/dev/null") == 0) return true;
  std::string log;
  RunCommand({"tail", "-40", dir_ + "/data/log"}, {}, &log);
  std::fprintf(stderr, "the cluster did not stop; its log ends:\n%s\n", log.c_str());
  return false;
}

bool OwnCluster::Migrate() {
  std::string out;
  const int rc = RunCommand({ApiServerBinary(), "migrate"}, {{"SPILLWAY_DATABASE_URL", dsn()}}, &out);
  if (rc != 0) std::fprintf(stderr, "migrate: %s\n", out.c_str());
  return rc == 0;
}

int OwnCluster::AsPg(const std::string& cmd) {
  return ::geteuid() == 0 ? Sh("runuser -u postgres -- sh -c \"" + ShellEscape(cmd) + "\"") : Sh(cmd);
}

}  // namespace spillway::test

namespace spillway::test {

PartitionProxy::PartitionProxy(int upstream_port) : upstream_port_(upstream_port) {
  listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 128) != 0)
    throw std::runtime_error("partition proxy: cannot listen");
  socklen_t len = sizeof a;
  ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  ::fcntl(listener_, F_SETFL, ::fcntl(listener_, F_GETFL) | O_NONBLOCK);
  thread_ = std::thread([this] { Run(); });
}

PartitionProxy::~PartitionProxy() {
  stop_ = true;
  thread_.join();
  ::close(listener_);
}

void PartitionProxy::Cut() { cut_ = true; }
void PartitionProxy::Heal() { cut_ = false; }

void PartitionProxy::Run() {
  struct Side {
    int fd = -1;
    std::string out;  // bytes waiting to be written to this side
  };
  struct Pair {
    Side client, upstream;
    bool closed = false;
  };
  std::vector<Pair> pairs;
  const auto close_pair = [](Pair& p) {
    ::close(p.client.fd);
    ::close(p.upstream.fd);
    p.closed = true;
  };
  while (!stop_) {
    if (cut_) {  // a partition: nothing is read, written or connected
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    std::vector<pollfd> fds{{listener_, POLLIN, 0}};
    for (auto& p : pairs) {
      fds.push_back({p.client.fd, static_cast<short>(POLLIN | (p.client.out.empty() ? 0 : POLLOUT)), 0});
      fds.push_back({p.upstream.fd, static_cast<short>(POLLIN | (p.upstream.out.empty() ? 0 : POLLOUT)), 0});
    }
    if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
    if (cut_) continue;
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      Pair& p = pairs[i];
      Side* sides[2] = {&p.client, &p.upstream};
      for (int k = 0; k < 2 && !p.closed; ++k) {
        const short ev = fds[1 + 2 * i + k].revents;
        Side& self = *sides[k];
        Side& other = *sides[1 - k];
        if (ev & (POLLIN | POLLHUP | POLLERR)) {
          char buf[65536];
          const ssize_t n = ::read(self.fd, buf, sizeof buf);
          if (n > 0) {
            other.out.append(buf, static_cast<std::size_t>(n));
          } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            // One side closed: pass on what is waiting for the other, then close both.
            ::fcntl(other.fd, F_SETFL, ::fcntl(other.fd, F_GETFL) & ~O_NONBLOCK);
            if (!other.out.empty()) (void)!::write(other.fd, other.out.data(), other.out.size());
            close_pair(p);
            break;
          }
        }
        if ((ev & POLLOUT) && !self.out.empty()) {
          const ssize_t n = ::write(self.fd, self.out.data(), self.out.size());
          if (n > 0) self.out.erase(0, static_cast<std::size_t>(n));
        }
      }
    }
    pairs.erase(std::remove_if(pairs.begin(), pairs.end(), [](const Pair& p) { return p.closed; }), pairs.end());
    if (fds[0].revents & POLLIN) {
      for (;;) {
        const int c = ::accept(listener_, nullptr, nullptr);
        if (c < 0) break;
        const int u = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<std::uint16_t>(upstream_port_));
        if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
          ::close(u);
          ::close(c);
          continue;
        }
        for (int fd : {c, u}) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
        pairs.push_back({{c, {}}, {u, {}}, false});
      }
    }
  }
  for (auto& p : pairs)
    if (!p.closed) close_pair(p);
}

}  // namespace spillway::test
