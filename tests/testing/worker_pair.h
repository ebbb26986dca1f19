// Test support for the executor and shared pool tests: two real PostgreSQL
// 15 workers (LocalServer, log_connections on, max_connections 60) started
// once per test binary and shared by its cases; every case gets its own
// CounterTable and two observer connections, and ends checking that every
// count is zero, Audit() is clean and no coordinator backend is left on the
// workers. Plus the helpers those cases share: polling for a condition,
// reporting figures, what the workers logged, sessions.

#ifndef CONNTHROTTLE_TESTS_TESTING_WORKER_PAIR_H_
#define CONNTHROTTLE_TESTS_TESTING_WORKER_PAIR_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/shared_segment.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/heap_table.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"

namespace connthrottle::testing {

using ::connthrottle::cluster::LocalServer;
using ::connthrottle::cluster::PgClient;
using ::connthrottle::cluster::QueryResult;
using ::connthrottle::cluster::ServerConfig;
using ::testing::HasSubstr;

// The application_name the executor's connections carry (StandaloneContext's
// default); observers use LocalServer's "connthrottle-test".
inline constexpr char kCoordinatorBackends[] =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
    "AND backend_type = 'client backend'";
inline constexpr char kActiveCoordinatorQueries[] =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
    "AND backend_type = 'client backend' AND state = 'active' AND query LIKE '%pg_sleep%'";

// Polls `condition` until it holds or `timeout` passes. The pause between
// polls only spaces them; it never stands in for synchronisation.
inline bool PollUntil(const std::function<bool()>& condition,
                      absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
}

inline void Report(const std::string& what, const std::string& figure) {
  std::printf("[ FIGURE   ] %s: %s\n", what.c_str(), figure.c_str());
  std::fflush(stdout);
}

inline double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

inline NodeAddress Addr(const LocalServer& s) { return NodeAddress{s.host(), s.port()}; }
inline NodeKey KeyOf(const NodeAddress& a) { return Key(a.host, a.port, 1); }
inline NodeKey KeyOf(const LocalServer& s) { return KeyOf(Addr(s)); }

// The single integer a query returns; -1 and a test failure on error.
inline int IntValue(PgClient& c, const std::string& sql) {
  absl::StatusOr<std::string> v = c.QueryValue(sql);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() && !v->empty() ? std::stoi(*v) : -1;
}

// What `server` logged (log_connections is on): connections it received
// (every backend it started, whoever connected), and those of the executor it
// authorized ("connection authorized: ... application_name=connthrottle").
struct LoggedConnections {
  int received = 0;
  int authorized = 0;
};
inline LoggedConnections Logged(const LocalServer& server) {
  std::ifstream in(server.log_file());
  std::string line;
  LoggedConnections n;
  while (std::getline(in, line)) {
    if (absl::StrContains(line, "connection received:")) ++n.received;
    if (absl::StrContains(line, "connection authorized:") &&
        absl::EndsWith(line, "application_name=connthrottle")) {
      ++n.authorized;
    }
  }
  return n;
}

inline StandaloneContext::Settings Settings(int max_shared_pool_size) {
  StandaloneContext::Settings s;
  s.user = "postgres";
  s.database = "postgres";
  s.limits.max_shared_pool_size = max_shared_pool_size;
  return s;
}

inline std::unique_ptr<Owner> MustRegister(const CounterTable& table) {
  absl::StatusOr<std::unique_ptr<Owner>> owner = table.RegisterOwner();
  if (!owner.ok()) {
    ADD_FAILURE() << owner.status();
    std::abort();
  }
  return *std::move(owner);
}

// One coordinator session: an Owner, a context and an executor (destroyed in
// the reverse order, so the executor closes its connections first).
struct Session {
  Session(const CounterTable& table, StandaloneContext::Settings settings,
          ExecutorOptions options = {})
      : owner(MustRegister(table)),
        context(std::move(settings)),
        executor(*owner, context, options) {}

  std::unique_ptr<Owner> owner;
  StandaloneContext context;
  AdaptiveExecutor executor;
};

// A loopback port nobody listens on (bound, read, closed).
inline int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = -1;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

inline std::string Describe(const std::vector<KeyStats>& keys) {
  std::vector<std::string> out;
  for (const KeyStats& k : keys) {
    out.push_back(absl::StrCat(k.host, ":", k.port, " connections ", k.connections, " reserved ",
                               k.reserved, " waiters ", k.waiters));
  }
  return out.empty() ? "none" : absl::StrJoin(out, "; ");
}

inline std::optional<KeyStats> StatsOf(const CounterTable& table, const NodeAddress& node) {
  for (const KeyStats& k : table.Snapshot()) {
    if (k.host == node.host && k.port == node.port) return k;
  }
  return std::nullopt;
}

inline std::string Durations(const std::vector<absl::Duration>& ds) {
  std::vector<std::string> out;
  for (absl::Duration d : ds) out.push_back(absl::StrFormat("%.1f", Ms(d)));
  return absl::StrCat("[", absl::StrJoin(out, ", "), "] ms");
}

// ---------------------------------------------------------------------------

class WorkerPairTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = cluster::MakeServerRoot("ct-exec");
    if (!root.ok()) {
      *startup_error_ = root.status().ToString();
      return;
    }
    *root_ = *root;
    const absl::Time began = absl::Now();
    for (const char* name : {"worker1", "worker2"}) {
      absl::StatusOr<std::unique_ptr<LocalServer>> server =
          LocalServer::Start(*root_, ServerConfig{.name = name,
                                                  .max_connections = 60,
                                                  .settings = {{"log_connections", "on"}}});
      if (!server.ok()) {
        *startup_error_ = server.status().ToString();
        return;
      }
      (name[6] == '1' ? w1_ : w2_) = server->release();
    }
    Report("two workers started in", absl::StrFormat("%.0f ms", Ms(absl::Now() - began)));
  }

  static void TearDownTestSuite() {
    delete w1_;
    delete w2_;
    w1_ = w2_ = nullptr;
    if (!root_->empty()) cluster::RemoveTree(*root_);
  }

  void SetUp() override {
    ASSERT_TRUE(w1_ != nullptr && w2_ != nullptr) << "workers did not start: " << *startup_error_;
    heap_ = std::make_unique<HeapTable>();
    table_.emplace(heap_->table());
    keys_ = {KeyOf(*w1_), KeyOf(*w2_)};
    absl::StatusOr<std::unique_ptr<PgClient>> o1 = w1_->Connect();
    absl::StatusOr<std::unique_ptr<PgClient>> o2 = w2_->Connect();
    ASSERT_TRUE(o1.ok()) << o1.status();
    ASSERT_TRUE(o2.ok()) << o2.status();
    obs1_ = *std::move(o1);
    obs2_ = *std::move(o2);
    ASSERT_EQ(IntValue(*obs1_, kCoordinatorBackends), 0) << "worker1 busy before the test";
    ASSERT_EQ(IntValue(*obs2_, kCoordinatorBackends), 0) << "worker2 busy before the test";
  }

  // Every case's executors are gone by now: every count is zero, the
  // bookkeeping is exact, and the workers see no coordinator backend.
  void TearDown() override {
    if (obs1_ == nullptr) return;
    for (const NodeKey& key : keys_) {
      EXPECT_EQ(table().ConnectionCount(key), 0u) << key.ToString();
    }
    EXPECT_TRUE(table().Snapshot().empty()) << Describe(table().Snapshot());
    absl::Status audit = table().Audit();
    EXPECT_TRUE(audit.ok()) << audit;
    EXPECT_TRUE(PollUntil([&] { return IntValue(*obs1_, kCoordinatorBackends) == 0; }))
        << "coordinator backends left on worker1";
    EXPECT_TRUE(PollUntil([&] { return IntValue(*obs2_, kCoordinatorBackends) == 0; }))
        << "coordinator backends left on worker2";
    obs1_.reset();
    obs2_.reset();
    if (segment_ != nullptr) {
      const std::string name = segment_->name();
      segment_.reset();
      (void)SharedSegment::Remove(name);
    }
  }

  // Replaces the heap table by a table in a new, uniquely named segment.
  void UseSharedSegment(const std::string& what) {
    const std::string name =
        absl::StrCat("ct-exec-", what, "-", getpid(), "-", absl::ToUnixMicros(absl::Now()));
    absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
        SharedSegment::CreateOrAttach(name, TableOptions{});
    ASSERT_TRUE(segment.ok()) << segment.status();
    ASSERT_TRUE((*segment)->created());
    segment_ = *std::move(segment);
    table_.emplace(segment_->table());
  }

  const CounterTable& table() const { return *table_; }

  static inline LocalServer* w1_ = nullptr;
  static inline LocalServer* w2_ = nullptr;
  static inline std::string* root_ = new std::string;
  static inline std::string* startup_error_ = new std::string;

  std::unique_ptr<HeapTable> heap_;
  std::unique_ptr<SharedSegment> segment_;
  std::optional<CounterTable> table_;      // the heap table's, or the segment's
  std::vector<NodeKey> keys_;              // checked at the end of the case
  std::unique_ptr<PgClient> obs1_, obs2_;  // observe each worker (main thread only)
};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_WORKER_PAIR_H_
