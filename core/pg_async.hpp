#pragma once
// libpq in non-blocking mode, for short reads answered on the io threads without blocking them
// (docs/architecture.md, "Read path"): the io thread sends a prepared statement, goes back to its
// event loop, and reads the answer when the connection's socket is readable. libpqxx stays for
// everything else (transactions, the leader's steps, COPY, migrations).
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/db.hpp"

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;

namespace spillway {

// A column of one row, read as libpqxx's field is (is_null, as<T>), so one mapping function serves
// rows from either (core/sql.hpp's TimeFrom etc. take both).
class PgField {
 public:
  PgField(const PGresult* result, int row, int column) : r_(result), row_(row), col_(column) {}
  bool is_null() const;
  template <class T>
  T as() const;

 private:
  const char* text() const;
  const PGresult* r_;
  int row_, col_;
};
template <>
std::string PgField::as<std::string>() const;
template <>
std::int64_t PgField::as<std::int64_t>() const;
template <>
int PgField::as<int>() const;
template <>
bool PgField::as<bool>() const;

class PgRow {
 public:
  PgRow(const PGresult* result, int row) : r_(result), row_(row) {}
  // The column named exactly so (as the statement's AS names it). Throws std::out_of_range for a
  // column the statement does not have.
  PgField operator[](const char* column) const;

 private:
  const PGresult* r_;
  int row_;
  mutable int next_ = 0;  // where the last lookup ended: mappings read columns in SELECT order
};

// One statement's answer: its rows, or the error PostgreSQL gave.
class PgResult {
 public:
  explicit PgResult(PGresult* result);
  PgResult(PgResult&& other) noexcept;
  PgResult& operator=(PgResult&& other) noexcept;
  PgResult(const PgResult&) = delete;
  ~PgResult();
  bool ok() const;  // rows (possibly none), not an error
  int size() const;
  PgRow operator[](int row) const { return PgRow(r_, row); }

 private:
  PGresult* r_;
};

// One non-blocking session in pipeline mode, opened as OpenSession opens a libpqxx one (UTC,
// statement_timeout, application_name) with the given statements prepared. Not thread-safe: used
// by the one io thread that holds it.
class PgAsyncConnection {
 public:
  // Blocking (connects and prepares): run it on a worker, never on an io thread. Throws
  // std::runtime_error when the database cannot be reached.
  static std::unique_ptr<PgAsyncConnection> Open(const SessionOptions& options,
                                                 const std::vector<const Statement*>& statements);
  ~PgAsyncConnection();
  PgAsyncConnection(const PgAsyncConnection&) = delete;
  PgAsyncConnection& operator=(const PgAsyncConnection&) = delete;

  int socket() const;
  bool healthy() const;    // false once it broke: drop it
  bool encrypted() const;  // TLS to PostgreSQL

  // Pipeline mode (libpq's): many statements in flight, their answers in order. Queue buffers a
  // statement Open prepared, Sync ends a batch and sends everything buffered (one write, one
  // wake-up of the backend for the batch); an error aborts the rest of its batch. After Consume,
  // Next hands over what has arrived, one event at a time: call it only while something is in
  // flight. Each returns false when the connection is broken.
  //
  // Sync may take in answers while it sends (a batch larger than the socket's buffers cannot go
  // out while PostgreSQL waits for us to read): call Next after it before waiting on the socket,
  // since answers already in libpq's buffer will not make the socket readable. It blocks, on that
  // rare path only, up to the session's statement timeout.
  bool EnterPipeline();
  bool Queue(const Statement& statement, const std::vector<std::string>& params);
  bool Sync();
  bool Consume();
  enum class Event { kNothingYet, kResult, kEndOfStatement, kSync };
  Event Next(std::optional<PgResult>* out);

 private:
  explicit PgAsyncConnection(PGconn* conn) : conn_(conn) {}
  PGconn* conn_;
  std::chrono::milliseconds flush_timeout_{30000};  // Sync's limit: the statement timeout, if any
};

}  // namespace spillway
