// A small blocking libpq client for tests, the stress driver and the demo:
// connect with keyword/value parameters (never a pasted conninfo string), run
// SQL, get rows as strings. Errors are absl::Status; a server error carries
// its SQLSTATE (SqlState()).
//
// Not thread-safe: one PgClient per thread.

#ifndef CONNTHROTTLE_TESTS_TESTING_PG_CLIENT_H_
#define CONNTHROTTLE_TESTS_TESTING_PG_CLIENT_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/conn_params.h"

struct pg_conn;

namespace connthrottle::cluster {

using ::connthrottle::ConnParams;

struct QueryResult {
  std::string command_tag;
  std::vector<std::string> columns;
  std::vector<std::vector<std::optional<std::string>>> rows;

  // The first column of the first row, or "" when there is none or it is NULL.
  std::string Value() const;
};

// The SQLSTATE of a server error returned by PgClient ("" for other errors).
std::string SqlState(const absl::Status& status);

class PgClient {
 public:
  static absl::StatusOr<std::unique_ptr<PgClient>> Connect(const ConnParams& params);
  PgClient(const PgClient&) = delete;
  PgClient& operator=(const PgClient&) = delete;
  ~PgClient();

  // Runs `sql` (one or more statements; the last one's result is returned).
  absl::StatusOr<QueryResult> Query(const std::string& sql);
  // Runs `sql` with text parameters $1, $2, ...
  absl::StatusOr<QueryResult> Query(const std::string& sql,
                                    const std::vector<std::optional<std::string>>& params);
  absl::Status Exec(const std::string& sql) { return Query(sql).status(); }
  // The single value of a query that returns one.
  absl::StatusOr<std::string> QueryValue(const std::string& sql);

  // The server process id of this connection.
  int BackendPid() const;
  // Asks the server to cancel the statement this connection runs (from
  // another thread, while Query blocks).
  absl::Status Cancel();
  // Closes the socket without saying goodbye, as a crashed client would.
  void Abandon();
  // The payloads of the notifications (LISTEN) received so far and not
  // yet taken, reading what the server has sent without waiting.
  std::vector<std::string> TakeNotifications();

 private:
  explicit PgClient(pg_conn* conn) : conn_(conn) {}
  pg_conn* conn_;
};

}  // namespace connthrottle::cluster

#endif  // CONNTHROTTLE_TESTS_TESTING_PG_CLIENT_H_
