#include "core/pg_async.hpp"

#include <libpq-fe.h>

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
  const int c = PQfnumber(r_, column);
  if (c < 0) throw std::out_of_range(std::string("no column ") + column);
  return PgField(r_, row_, c);
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
  PgResult setup(PQexecParams(conn,
                              "SELECT set_config('TimeZone', 'UTC', false), set_config('application_name', $1, false), "
                              "set_config('statement_timeout', $2, false), "
                              "set_config('client_connection_check_interval', '1000', false)",
                              2, nullptr, params, nullptr, nullptr, 0));
  if (!setup.ok()) throw Failure(conn, "cannot set up the session");
  for (const Statement* s : statements) {
    PGresult* prepared = PQprepare(conn, s->name, s->sql, 0, nullptr);
    const bool ok = prepared && PQresultStatus(prepared) == PGRES_COMMAND_OK;
    PQclear(prepared);
    if (!ok) throw Failure(conn, std::string("cannot prepare ") + s->name);
  }
  if (PQsetnonblocking(conn, 1) != 0) throw Failure(conn, "cannot make the connection non-blocking");
  return out;
}

PgAsyncConnection::~PgAsyncConnection() {
  if (conn_) PQfinish(conn_);
}

int PgAsyncConnection::socket() const { return PQsocket(conn_); }
bool PgAsyncConnection::healthy() const { return conn_ && PQstatus(conn_) == CONNECTION_OK; }

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
  int flushed;
  while ((flushed = PQflush(conn_)) == 1) {
  }
  return flushed == 0;
}

bool PgAsyncConnection::Consume() { return PQconsumeInput(conn_) == 1; }

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
