#include "tests/testing/pg_client.h"

#include <libpq-fe.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace connthrottle::cluster {
namespace {

constexpr char kSqlStatePayload[] = "type.connthrottle/sqlstate";

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

absl::Status ServerError(const PGresult* result, const std::string& what) {
  const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  absl::Status status =
      absl::UnknownError(absl::StrCat(what, ": ", Trim(PQresultErrorMessage(result))));
  if (state != nullptr) {
    status.SetPayload(kSqlStatePayload, absl::Cord(state));
    if (std::string(state).rfind("53", 0) == 0) {  // insufficient resources
      status = absl::Status(absl::StatusCode::kResourceExhausted, status.message());
      status.SetPayload(kSqlStatePayload, absl::Cord(state));
    }
  }
  return status;
}

}  // namespace

std::string QueryResult::Value() const {
  if (rows.empty() || rows[0].empty() || !rows[0][0].has_value()) return "";
  return *rows[0][0];
}

std::string SqlState(const absl::Status& status) {
  absl::optional<absl::Cord> state = status.GetPayload(kSqlStatePayload);
  return state.has_value() ? std::string(*state) : "";
}

absl::StatusOr<std::unique_ptr<PgClient>> PgClient::Connect(const ConnParams& params) {
  PGconn* conn = PQconnectdbParams(params.keywords(), params.values(), /*expand_dbname=*/0);
  if (conn == nullptr) return absl::ResourceExhaustedError("libpq: out of memory");
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = Trim(PQerrorMessage(conn));
    PQfinish(conn);
    absl::Status status = absl::UnavailableError(
        absl::StrCat("cannot connect to ", params.ToString(), ": ", message));
    if (message.find("too many clients") != std::string::npos) {
      status.SetPayload(kSqlStatePayload, absl::Cord("53300"));
    }
    return status;
  }
  // Notices (and errors the server sends an idle connection) are not ours to
  // print on stderr: callers see errors through the statuses they get.
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
  return std::unique_ptr<PgClient>(new PgClient(conn));
}

PgClient::~PgClient() {
  if (conn_ != nullptr) PQfinish(conn_);
}

absl::StatusOr<QueryResult> PgClient::Query(const std::string& sql) { return Query(sql, {}); }

absl::StatusOr<QueryResult> PgClient::Query(const std::string& sql,
                                            const std::vector<std::optional<std::string>>& params) {
  if (conn_ == nullptr) return absl::FailedPreconditionError("connection abandoned");
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p.has_value() ? p->c_str() : nullptr);
  PGresult* result = params.empty()
                         ? PQexec(conn_, sql.c_str())
                         : PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()),
                                        nullptr, values.data(), nullptr, nullptr, 0);
  if (result == nullptr) {
    return absl::UnavailableError(absl::StrCat("query failed: ", Trim(PQerrorMessage(conn_))));
  }
  std::unique_ptr<PGresult, void (*)(PGresult*)> guard(result, PQclear);
  ExecStatusType status = PQresultStatus(result);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return ServerError(result, absl::StrCat("query \"", sql.substr(0, 200), "\" failed"));
  }
  QueryResult out;
  out.command_tag = PQcmdStatus(result);
  const int columns = PQnfields(result);
  for (int c = 0; c < columns; ++c) out.columns.push_back(PQfname(result, c));
  for (int r = 0; r < PQntuples(result); ++r) {
    std::vector<std::optional<std::string>> row;
    for (int c = 0; c < columns; ++c) {
      if (PQgetisnull(result, r, c)) {
        row.push_back(std::nullopt);
      } else {
        row.emplace_back(std::string(PQgetvalue(result, r, c), PQgetlength(result, r, c)));
      }
    }
    out.rows.push_back(std::move(row));
  }
  return out;
}

absl::StatusOr<std::string> PgClient::QueryValue(const std::string& sql) {
  absl::StatusOr<QueryResult> result = Query(sql);
  if (!result.ok()) return result.status();
  return result->Value();
}

int PgClient::BackendPid() const { return conn_ != nullptr ? PQbackendPID(conn_) : 0; }

std::vector<std::string> PgClient::TakeNotifications() {
  std::vector<std::string> out;
  if (conn_ == nullptr) return out;
  PQconsumeInput(conn_);
  while (PGnotify* n = PQnotifies(conn_)) {
    out.emplace_back(n->extra);
    PQfreemem(n);
  }
  return out;
}

absl::Status PgClient::Cancel() {
  if (conn_ == nullptr) return absl::FailedPreconditionError("connection abandoned");
  PGcancel* cancel = PQgetCancel(conn_);
  if (cancel == nullptr) return absl::InternalError("PQgetCancel failed");
  char error[256];
  int ok = PQcancel(cancel, error, sizeof(error));
  PQfreeCancel(cancel);
  return ok ? absl::OkStatus() : absl::UnavailableError(absl::StrCat("cancel failed: ", error));
}

void PgClient::Abandon() {
  if (conn_ == nullptr) return;
  // Close the socket under libpq: the server sees the client vanish without a
  // Terminate message, as when a client process dies.
  int fd = PQsocket(conn_);
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
  PQfinish(conn_);
  conn_ = nullptr;
}

}  // namespace connthrottle::cluster
