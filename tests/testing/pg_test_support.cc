#include "tests/testing/pg_test_support.h"

#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"

namespace connthrottle::cluster {

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

bool PollUntil(const std::function<bool()>& condition, Clock::duration timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

absl::Status AddExtensionAndWorkers(LocalServer& coordinator, const std::vector<int>& ports) {
  std::vector<std::string> statements = {"CREATE EXTENSION connthrottle"};
  for (int port : ports) {
    statements.push_back(absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", port, ")"));
  }
  for (const std::string& sql : statements) {
    if (absl::StatusOr<QueryResult> r = coordinator.Query(sql); !r.ok()) return r.status();
  }
  return absl::OkStatus();
}

void Report(const std::string& what, const std::string& figure) {
  std::printf("[ FIGURE   ] %s: %s\n", what.c_str(), figure.c_str());
  std::fflush(stdout);
}

AsyncQuery::AsyncQuery(PgClient& client, std::string sql,
                       std::vector<std::optional<std::string>> params)
    : client_(client) {
  thread_ = std::thread([this, sql = std::move(sql), params = std::move(params)] {
    absl::StatusOr<QueryResult> r = client_.Query(sql, params);
    ended_ = Clock::now();
    result_ = std::move(r);
    done_.store(true, std::memory_order_release);
  });
}

AsyncQuery::~AsyncQuery() {
  if (!done()) (void)client_.Cancel();
  thread_.join();
}

bool AsyncQuery::WaitDone(Clock::duration timeout) {
  return PollUntil([this] { return done(); }, timeout);
}

std::ostream& operator<<(std::ostream& os, const NodeCounters& c) {
  return os << "{rows " << c.rows << ", connections " << c.connections << ", forced " << c.forced
            << ", reserved " << c.reserved << ", waiters " << c.waiters << "}";
}

}  // namespace connthrottle::cluster
