// Work that reaches the pool from outside its process's threads
// (SharedPool::ExternalWork: the extension's backends write an eventfd the
// loop polls): `serve` runs on the loop's thread only when the descriptor
// was signalled, the descriptor is drained before `serve` runs (so work
// published while `serve` runs is not missed), and `serve` may submit and
// cancel on the loop's own thread.
//
// What `serve` touches lives in the fixture, not in the test's body: the
// pool (and its thread) lives until TearDown.

#include <sys/eventfd.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>

#include "connthrottle/executor/shared_pool.h"
#include "gtest/gtest.h"
#include "tests/testing/shared_pool_fixture.h"

namespace connthrottle::testing {
namespace {

class ExternalWorkTest : public SharedPoolTest {
 protected:
  void SetUp() override {
    SharedPoolTest::SetUp();
    fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override {
    SharedPoolTest::TearDown();  // the pool first: it polls fd_
    if (fd_ >= 0) close(fd_);
  }

  // A publisher's signal (a backend's write after it published its request).
  void Signal() {
    const uint64_t one = 1;
    ASSERT_EQ(write(fd_, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
  }

  SharedPool& PoolServing(std::function<void()> serve) {
    pool_limits_ = std::make_unique<StandaloneContext>(Settings(2));
    pool_owner_ = MustRegister(table());
    StandaloneContext* limits = pool_limits_.get();
    pool_ = std::make_unique<SharedPool>(
        *pool_owner_,
        [limits](const NodeAddress& node, bool local) { return limits->LimitFor(node, local); },
        SharedPoolOptions{}, SharedPool::ExternalWork{fd_, std::move(serve)});
    return *pool_;
  }

  SharedPool::Submission One(const std::string& sql) {
    SharedPool::Submission s;
    s.tasks = {Task{Addr(*w1_), sql}};
    s.params = {pool_limits_->ParamsFor(Addr(*w1_))};
    s.local = {false};
    s.database_id = pool_limits_->DatabaseId();
    return s;
  }

  int fd_ = -1;
  std::mutex mu_;
  std::condition_variable changed_;
  // Guarded by mu_.
  int calls_ = 0;
  bool publish_ = false;
  int published_in_ = 0;  // the call during which work was published
  int asked_ = 0, done_ = 0;
  SharedPool* pool_ptr_ = nullptr;
  SharedPool::Ticket answer_, sleeper_;
};

// The order that makes the hand-off safe: a request published after the
// loop drained the descriptor comes with a write after the drain, so the
// loop serves again. Draining after `serve` would eat that write, and the
// loop would sleep with the request unserved.
TEST_F(ExternalWorkTest, WorkSignalledWhileServingIsServedAtTheNextTurn) {
  publish_ = true;
  Signal();  // before the pool: its first turn drains it and serves
  PoolServing([this] {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_;
    if (std::exchange(publish_, false)) {
      published_in_ = calls_;
      Signal();
    }
    changed_.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu_);
  EXPECT_TRUE(changed_.wait_for(lock, std::chrono::seconds(60),
                                [&] { return published_in_ > 0 && calls_ > published_in_; }))
      << "calls " << calls_ << ", published during call " << published_in_;
}

// `serve` is the loop's to call when the descriptor is signalled, not at
// every turn: work the pool's own inbox brings turns the loop without it.
TEST_F(ExternalWorkTest, ServeRunsOnlyWhenTheDescriptorIsSignalled) {
  Signal();  // drained by the pool's first turn, and never again signalled
  SharedPool& pool = PoolServing([this] {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_;
    changed_.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(mu_);
    ASSERT_TRUE(changed_.wait_for(lock, std::chrono::seconds(60), [&] { return calls_ > 0; }));
  }
  for (int i = 0; i < 3; ++i) {
    SharedPool::Ticket t = pool.Submit(One("SELECT 1"));
    ASSERT_TRUE(pool.Await(t, absl::Seconds(60)).settled);
    EXPECT_TRUE(pool.TakeResults(t).tasks[0].status.ok());
  }
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(calls_, 1);
}

// What `serve` submits runs, and what it cancels stops: Submit and Cancel
// on the loop's own thread (where they skip the pool's wake-up, since the
// loop takes its inbox right after `serve`).
TEST_F(ExternalWorkTest, ServeSubmitsAndCancelsOnTheLoopsThread) {
  SharedPool& p = PoolServing([this] {
    std::lock_guard<std::mutex> lock(mu_);
    for (; done_ < asked_; ++done_) {
      if (done_ == 0) {
        answer_ = pool_ptr_->Submit(One("SELECT 42"));
        sleeper_ = pool_ptr_->Submit(One("SELECT pg_sleep(600)"));
      } else {
        pool_ptr_->Cancel(sleeper_);
      }
    }
    changed_.notify_all();
  });
  auto step = [&](int n) {  // steps: 1 submits two tasks, 2 cancels the sleeper
    {
      std::lock_guard<std::mutex> lock(mu_);
      pool_ptr_ = &p;
      asked_ = n;
    }
    Signal();
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::seconds(60), [&] { return done_ == n; });
  };
  ASSERT_TRUE(step(1));
  SharedPool::Ticket answer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    answer = answer_;
  }
  ASSERT_TRUE(p.Await(answer, absl::Seconds(60)).settled);
  ExecutionResult r = p.TakeResults(answer);
  ASSERT_TRUE(r.tasks[0].status.ok()) << r.tasks[0].status;
  EXPECT_EQ(r.tasks[0].rows[0][0], "42");
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, kActiveCoordinatorQueries) == 1; }));
  ASSERT_TRUE(step(2));
  EXPECT_TRUE(PollUntil([&] { return IntValue(*obs1_, kActiveCoordinatorQueries) == 0; }));
}

}  // namespace
}  // namespace connthrottle::testing
