#include "core/pg_async.hpp"

#include <libpq-fe.h>
#include <openssl/ssl.h>
#include <poll.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace spillway {

// ------------------------------------------------------------------------------------------------
// Rows

bool PgField::is_null() const { return PQgetisnull(r_, row_, col_) != 0; }
const char* PgField::text() const { return PQgetvalue(r_, row_, col_); }

template <>
std::string PgField::as<std::string>() const {
  return std::string(text(), static_cast<std::size_t>(PQgetlength(r_, row_, col_)));
}
template <>
std::int64_t PgField::as<std::int64_t>() const {
  return std::strtoll(text(), nullptr, 10);
}
template <>
int PgField::as<int>() const {
  return static_cast<int>(std::strtol(text(), nullptr, 10));
}
template <>
bool PgField::as<bool>() const {
  return text()[0] == 't';
}

PgField PgRow::operator[](const char* column) const {
  // Not PQfnumber: it copies and case-folds the name and scans from the first column on every call
  // (3 % of the server's CPU for an instance read, 31 columns). Exact names, and the search starts
  // where the last one ended, so a mapping that reads in SELECT order finds each at once.
  const int n = PQnfields(r_);
  for (int k = 0; k < n; ++k) {
    const int c = (next_ + k) % n;
    if (std::strcmp(PQfname(r_, c), column) == 0) {
      next_ = c + 1 < n ? c + 1 : 0;
      return PgField(r_, row_, c);
    }
  }
  throw std::out_of_range(std::string("no column ") + column);
}

PgResult::PgResult(PGresult* result) : r_(result) {}
PgResult::PgResult(PgResult&& other) noexcept : r_(other.r_) { other.r_ = nullptr; }
PgResult& PgResult::operator=(PgResult&& other) noexcept {
  if (this != &other) {
    if (r_) PQclear(r_);
    r_ = other.r_;
    other.r_ = nullptr;
  }
  return *this;
}
PgResult::~PgResult() {
  if (r_) PQclear(r_);
}
bool PgResult::ok() const { return r_ && PQresultStatus(r_) == PGRES_TUPLES_OK; }
int PgResult::size() const { return r_ ? PQntuples(r_) : 0; }

// ------------------------------------------------------------------------------------------------
// The connection

namespace {
std::runtime_error Failure(PGconn* conn, const std::string& what) {
  std::string message = what + ": " + (conn ? PQerrorMessage(conn) : "out of memory");
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return std::runtime_error(message);
}
}  // namespace

std::unique_ptr<PgAsyncConnection> PgAsyncConnection::Open(const SessionOptions& options,
                                                           const std::vector<const Statement*>& statements) {
  PGconn* conn = PQconnectdb(WithConnectTimeout(options.url, options.connect_timeout).c_str());
  std::unique_ptr<PgAsyncConnection> out(new PgAsyncConnection(conn));
  if (!conn || PQstatus(conn) != CONNECTION_OK) throw Failure(conn, "cannot connect");
  // The same session settings as OpenSession gives libpqxx's connections.
  const std::string timeout = std::to_string(options.statement_timeout.count());
  const char* params[] = {options.application_name.c_str(), timeout.c_str()};
  PgResult setup(PQexecParams(conn, kSessionSetupSql, 2, nullptr, params, nullptr, nullptr, 0));
  if (!setup.ok()) throw Failure(conn, "cannot set up the session");
  for (const Statement* s : statements) {
    PGresult* prepared = PQprepare(conn, s->name, s->sql, 0, nullptr);
    const bool ok = prepared && PQresultStatus(prepared) == PGRES_COMMAND_OK;
    PQclear(prepared);
    if (!ok) throw Failure(conn, std::string("cannot prepare ") + s->name);
  }
  if (PQsetnonblocking(conn, 1) != 0) throw Failure(conn, "cannot make the connection non-blocking");
  // How long Sync may wait to send a batch: as long as a statement may run (0 there means no limit).
  if (options.statement_timeout.count() > 0) out->flush_timeout_ = options.statement_timeout;
  return out;
}

PgAsyncConnection::~PgAsyncConnection() {
  if (conn_) PQfinish(conn_);
}

int PgAsyncConnection::socket() const { return PQsocket(conn_); }
bool PgAsyncConnection::healthy() const { return conn_ && PQstatus(conn_) == CONNECTION_OK; }
bool PgAsyncConnection::encrypted() const { return conn_ && PQsslInUse(conn_) == 1; }

bool PgAsyncConnection::EnterPipeline() { return PQenterPipelineMode(conn_) == 1; }

bool PgAsyncConnection::Queue(const Statement& statement, const std::vector<std::string>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p.c_str());
  return PQsendQueryPrepared(conn_, statement.name, static_cast<int>(values.size()), values.data(), nullptr, nullptr,
                             0) == 1;
}

bool PgAsyncConnection::Sync() {
  if (PQpipelineSync(conn_) != 1) return false;
  // PQflush answers 1 while part of the batch is still unsent: the socket's buffer is full. With a
  // large batch that lasts until we read, since PostgreSQL stops taking statements while its
  // answers wait on us: so wait for the socket either way, and take in what arrives (libpq keeps
  // it for Next). Spinning on PQflush here would never end.
  const auto deadline = std::chrono::steady_clock::now() + flush_timeout_;
  for (;;) {
    const int flushed = PQflush(conn_);
    if (flushed != 1) return flushed == 0;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{PQsocket(conn_), POLLIN | POLLOUT, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left));
    if (ready < 0 && errno != EINTR) return false;
    if (ready > 0 && (p.revents & (POLLIN | POLLERR | POLLHUP)) && !Consume()) return false;
  }
}

bool PgAsyncConnection::Consume() {
  if (PQconsumeInput(conn_) != 1) return false;
  // Over TLS, OpenSSL can hold decrypted bytes of a record that did not fit libpq's buffer. The
  // socket shows nothing for them, so a wait on it would not end: take them now.
  if (auto* ssl = static_cast<SSL*>(PQsslStruct(conn_, "OpenSSL"))) {
    for (int i = 0; i < 1024 && SSL_pending(ssl) > 0; ++i)
      if (PQconsumeInput(conn_) != 1) return false;
  }
  return true;
}

PgAsyncConnection::Event PgAsyncConnection::Next(std::optional<PgResult>* out) {
  if (PQisBusy(conn_)) return Event::kNothingYet;
  PGresult* r = PQgetResult(conn_);
  if (!r) return Event::kEndOfStatement;
  if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
    PQclear(r);
    return Event::kSync;
  }
  out->emplace(r);
  return Event::kResult;
}

}  // namespace spillway
