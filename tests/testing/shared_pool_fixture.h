// The fixtures of shared_pool_test (tests/shared_pool_*_test.cc): the shared
// pool against real PostgreSQL 15 workers.
//
// TransportTest runs the same cases on both transports (the direct
// AdaptiveExecutor and SharedPoolTransport): results per task, the strict
// limit as the workers see it with more sessions than slots, local
// failover, a worker error, a refused node, bounded rows, cancel.
//
// SharedPoolTest checks what only the pool does: connections that outlive
// sessions (counted by the backends the workers started), round-robin
// between sessions (the order tasks ran, read from a sequence on the
// worker), idle connections closed after the idle timeout, a dead idle
// connection replaced, a worker backend killed mid-task (08006), a cancel
// that leaves the connection usable, a task that leaves a transaction open;
// IsolationTest what a task leaves on its pooled connection, TwoPoolsTest
// two pools of one node sharing its slots.
//
// Every case ends with every count at zero, a clean Audit() and no
// coordinator backend left on the workers (WorkerPairTest::TearDown), after
// its pool is destroyed. Cases synchronise by awaiting conditions.

#ifndef CONNTHROTTLE_TESTS_TESTING_SHARED_POOL_FIXTURE_H_
#define CONNTHROTTLE_TESTS_TESTING_SHARED_POOL_FIXTURE_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/executor/transport.h"
#include "gtest/gtest.h"
#include "tests/testing/worker_pair.h"

namespace connthrottle::testing {

// The backends of this test's coordinator connections that run `pattern`.
inline std::string ActiveQueries(const std::string& pattern) {
  return absl::StrCat(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
      "AND backend_type = 'client backend' AND state = 'active' AND query LIKE '%",
      pattern, "%'");
}

// One session of either transport.
struct AnySession {
  explicit AnySession(StandaloneContext::Settings settings) : context(std::move(settings)) {}
  std::unique_ptr<Owner> owner;  // direct transport only
  StandaloneContext context;
  std::unique_ptr<Transport> transport;
};

// A fixture with one SharedPool per case, created on first use with the
// limits of the settings it is given.
class PoolFixture : public WorkerPairTest {
 protected:
  void TearDown() override {
    pool_.reset();  // closes every pooled connection, giving back its slot
    pool_owner_.reset();
    WorkerPairTest::TearDown();
  }

  // The case's pool; made by the first call (from the test's main thread).
  SharedPool& Pool(const StandaloneContext::Settings& settings, SharedPoolOptions options = {}) {
    if (pool_ == nullptr) {
      pool_limits_ = std::make_unique<StandaloneContext>(settings);
      pool_owner_ = MustRegister(table());
      StandaloneContext* limits = pool_limits_.get();
      pool_ = std::make_unique<SharedPool>(
          *pool_owner_,
          [limits](const NodeAddress& node, bool local) { return limits->LimitFor(node, local); },
          options);
    }
    return *pool_;
  }

  std::unique_ptr<AnySession> PoolSession(StandaloneContext::Settings settings,
                                          SharedPoolTransport::Options options = {}) {
    SharedPool& pool = Pool(settings);
    auto s = std::make_unique<AnySession>(std::move(settings));
    s->transport = std::make_unique<SharedPoolTransport>(pool, s->context, options);
    return s;
  }

  std::unique_ptr<StandaloneContext> pool_limits_;
  std::unique_ptr<Owner> pool_owner_;
  std::unique_ptr<SharedPool> pool_;
};

// What only the shared pool does.

class SharedPoolTest : public PoolFixture {
 protected:
  // The backend pid of the worker connection that runs a task.
  static int Pid(const TaskResult& t) {
    EXPECT_TRUE(t.status.ok()) << t.status;
    return t.status.ok() && t.rows.size() == 1 ? std::stoi(*t.rows[0][0]) : -1;
  }
};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_SHARED_POOL_FIXTURE_H_
