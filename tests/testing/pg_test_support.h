// Helpers shared by the tests that run against real PostgreSQL servers:
// polling a condition with a deadline, reporting a measured figure, a query
// running on a thread of its own, and a node's counters as the extension
// shows them.

#ifndef CONNTHROTTLE_TESTS_TESTING_PG_TEST_SUPPORT_H_
#define CONNTHROTTLE_TESTS_TESTING_PG_TEST_SUPPORT_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"

namespace connthrottle::cluster {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d);

// Polls `condition` until it holds or `timeout` passes; whether it held. The
// pause between polls only spaces them; it never stands in for
// synchronisation.
bool PollUntil(const std::function<bool()>& condition,
               Clock::duration timeout = std::chrono::seconds(60));

// On a new coordinator: CREATE EXTENSION connthrottle, then each of `ports`
// added as a worker node on 127.0.0.1, in that order. The first error.
absl::Status AddExtensionAndWorkers(LocalServer& coordinator, const std::vector<int>& ports);

// Prints "[ FIGURE   ] what: figure", beside gtest's own lines.
void Report(const std::string& what, const std::string& figure);

// Runs one query on `client` in a thread of its own and records when it
// returned. If the query still runs when this object is destroyed (a failed
// assertion left it waiting), it is cancelled first.
class AsyncQuery {
 public:
  AsyncQuery(PgClient& client, std::string sql,
             std::vector<std::optional<std::string>> params = {});
  AsyncQuery(const AsyncQuery&) = delete;
  AsyncQuery& operator=(const AsyncQuery&) = delete;
  ~AsyncQuery();

  bool done() const { return done_.load(std::memory_order_acquire); }
  // Waits (with a deadline) for the query to return; false if it did not.
  bool WaitDone(Clock::duration timeout = std::chrono::seconds(10));
  // Valid once done().
  const absl::StatusOr<QueryResult>& result() const { return result_; }
  Clock::time_point ended() const { return ended_; }

 private:
  PgClient& client_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  absl::StatusOr<QueryResult> result_ = absl::UnknownError("not finished");
  Clock::time_point ended_;
};

// A node's row of connthrottle.nodes (rows: 0 when the node is not busy).
struct NodeCounters {
  int rows = 0;
  int connections = 0;
  int forced = 0;
  int reserved = 0;
  int waiters = 0;
  bool operator==(const NodeCounters&) const = default;
};
std::ostream& operator<<(std::ostream& os, const NodeCounters& c);

}  // namespace connthrottle::cluster

#endif  // CONNTHROTTLE_TESTS_TESTING_PG_TEST_SUPPORT_H_
