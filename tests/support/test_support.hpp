#pragma once
// Helpers for the PostgreSQL and end-to-end tests: a database of the test's own, the real
// spillway-apiserver as a child process, and a small HTTP/1.1 client over real sockets.
#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"

namespace spillway::test {

// A fresh database built from the migrations, dropped when this goes away. Needs SPILLWAY_TEST_DSN
// (scripts/test sets it to the throwaway cluster it starts).
class TestDb {
 public:
  explicit TestDb(bool migrate = true);
  ~TestDb();
  const std::string& dsn() const { return dsn_; }
  const std::string& name() const { return name_; }
  std::unique_ptr<pqxx::connection> Connect() const;

 private:
  std::string admin_dsn_, name_, dsn_;
};

std::string BaseDsn();  // SPILLWAY_TEST_DSN; fails the test when unset

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// One client connection; plain TCP, or TLS when tls_version is set (e.g. TLS1_3_VERSION).
class HttpConn {
 public:
  // tls12_ciphers: what a TLS 1.2 client offers (OpenSSL's cipher list syntax), when not empty.
  explicit HttpConn(int port, int tls_min_version = 0, int tls_max_version = 0, const std::string& tls12_ciphers = "");
  ~HttpConn();
  bool ok() const { return fd_ >= 0 && (!tls_ || handshake_ok_); }
  void SendRaw(const std::string& bytes);
  // Reads one response (to a HEAD request: without a body); nullopt when the connection closed or
  // timed out first.
  std::optional<HttpResponse> Read(std::chrono::milliseconds timeout = std::chrono::seconds(10), bool head_request = false);
  HttpResponse Call(const std::string& method, const std::string& target, const std::string& key = "",
                    const std::string& body = "", std::map<std::string, std::string> headers = {});
  // True when the server closed the connection (reads EOF) within timeout.
  bool ClosedByPeer(std::chrono::milliseconds timeout);

 private:
  int ReadSome(char* buf, int n, std::chrono::milliseconds timeout);
  int fd_ = -1;
  void* ssl_ctx_ = nullptr;
  void* tls_ = nullptr;
  bool handshake_ok_ = false;
  std::string buffer_;
};

// One-shot request on a new connection.
HttpResponse Http(int port, const std::string& method, const std::string& target, const std::string& key = "",
                  const std::string& body = "", std::map<std::string, std::string> headers = {});

int FreePort();

// A fixed time in a test, "2026-11-05T09:00:00Z" (must parse).
inline TimeMs T(const char* iso) { return *ParseTime(iso); }

// Runs `sql` on `conn` in a transaction of its own and commits it; `params` fill its $1, $2, ...
void ExecSql(pqxx::connection& conn, const std::string& sql);
template <class... Params>
void ExecSql(pqxx::connection& conn, const std::string& sql, const Params&... params) {
  pqxx::work tx(conn);
  tx.exec_params(sql, params...);
  tx.commit();
}
// The first column of the first row `sql` answers on `conn`; "" when there is no row or it is NULL.
// `params` fill its $1, $2, ...
std::string SqlValue(pqxx::connection& conn, const std::string& sql);
template <class... Params>
std::string SqlValue(pqxx::connection& conn, const std::string& sql, const Params&... params) {
  pqxx::nontransaction tx(conn);
  const auto r = tx.exec_params(sql, params...);
  return r.empty() || r[0][0].is_null() ? "" : r[0][0].c_str();
}

// A child process with extra environment variables; stderr goes to a file (shown on failure).
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env);
  ~Process();
  int pid() const { return pid_; }
  bool Running();
  // Sends sig and waits for the exit code (-1 on timeout, then the process is killed).
  int Stop(int sig, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  std::string Stderr() const;

 private:
  int pid_ = -1;
  int exit_code_ = -1;
  bool exited_ = false;
  std::string log_path_;
};

// Runs a command to completion; returns its exit code and fills out with stdout+stderr.
int RunCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
               std::string* out);

// The real spillway-apiserver `serve` on free loopback ports, against a database of its own.
class ApiServer {
 public:
  explicit ApiServer(const std::string& dsn, std::map<std::string, std::string> env = {});
  ~ApiServer();
  int port() const { return port_; }
  int admin_port() const { return admin_port_; }
  Process& process() { return *process_; }
  std::map<std::string, std::string> Env() const { return env_; }
  // Waits until /readyz answers 200; false if the process died or the time ran out. Ports taken
  // meanwhile by another process are replaced, so read port() and admin_port() after this.
  bool WaitReady(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // Starts the process again on the same ports (after it was killed or stopped).
  void Restart();

 private:
  void Spawn();
  std::map<std::string, std::string> env_;
  int port_, admin_port_;
  std::unique_ptr<Process> process_;
};

// A TCP proxy on a free loopback port to 127.0.0.1:upstream_port, which a test can cut as a network
// partition would: while cut it moves no byte either way and connects nothing new (connections
// wait in its listen queue), so both sides' requests hang rather than fail; healed, everything
// flows again, bytes held meanwhile included.
class PartitionProxy {
 public:
  explicit PartitionProxy(int upstream_port);
  ~PartitionProxy();
  int port() const { return port_; }
  void Cut();
  void Heal();

 private:
  void Run();
  int upstream_port_, port_ = 0, listener_ = -1;
  std::atomic<bool> cut_{false}, stop_{false};
  std::thread thread_;
};

std::string ApiServerBinary();
std::string AgentBinary();
std::string FleetSimBinary();  // spillway-fleet-sim: many simulated hosts in one process
// A key file for secrets.key_file (mode 0600), one per test binary, removed when it exits: every
// apiserver a test starts seals env values with it (ApiServer sets SPILLWAY_SECRETS_KEY_FILE).
const std::string& TestSecretsKeyFile();
// Polls `done` every 50 ms until it holds or `timeout` passes; returns whether it held.
bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout);
// A PostgreSQL cluster of the test's own (initdb under /tmp), so that stopping or restarting it
// disturbs no other test. Its dsn() is the `postgres` database; Migrate() applies our migrations.
// With tls, it also listens on 127.0.0.1 with ssl on (a self-signed certificate made by the openssl
// command): tls_dsn() connects there with sslmode=require.
class OwnCluster {
 public:
  explicit OwnCluster(bool tls = false);
  ~OwnCluster();
  bool ok() const { return ok_; }
  std::string dsn() const;
  std::string tls_dsn() const;
  bool Start();
  bool Stop();
  bool Migrate();
  const std::string& dir() const { return dir_; }  // data/ (the cluster), run/ (its socket)
  const std::string& bin() const { return bin_; }  // PostgreSQL's programs
  int port() const { return port_; }
  // Runs a shell command as the postgres user (when root), as PostgreSQL's own programs must be.
  int AsPg(const std::string& cmd);

 private:
  std::string bin_, dir_;
  int port_ = 0;
  bool tls_ = false;
  bool ok_ = false;
};

// A self-signed certificate for "localhost" (CN and subjectAltName), dir/cert.pem and dir/key.pem,
// made with the openssl command; false (with its output in *out) when that failed.
bool MakeLocalhostCertificate(const std::string& dir, std::string* out);
// The environment that turns on an apiserver's TLS listener on 127.0.0.1:port with that certificate.
std::map<std::string, std::string> TlsListenerEnv(const std::string& dir, int port);

// Runs `spillway-apiserver bootstrap-admin` against dsn and returns the key it prints.
std::string BootstrapAdmin(const std::string& dsn);


}  // namespace spillway::test
