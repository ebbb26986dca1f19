// The demand window (demand_window.h): a peak is kept for one to two
// buckets, then forgotten; a long silence forgets everything.

#include "core/demand_window.h"

#include "gtest/gtest.h"

namespace connthrottle {
namespace {

constexpr int64_t kMs = 1'000'000;

TEST(DemandWindowTest, APeakIsKeptForABucketAndThenForgotten) {
  DemandWindow w(500 * kMs);
  EXPECT_EQ(w.Max(), 0);
  w.Add(0, 5);
  w.Add(100 * kMs, 1);  // a pool between two tasks
  EXPECT_EQ(w.Max(), 5);
  w.Add(600 * kMs, 1);  // the next bucket: the peak is the previous one's
  EXPECT_EQ(w.Max(), 5);
  w.Add(1100 * kMs, 1);  // two buckets on: the peak is gone
  EXPECT_EQ(w.Max(), 1);
  w.Add(1200 * kMs, 3);
  EXPECT_EQ(w.Max(), 3);
}

TEST(DemandWindowTest, ARiseCountsAtOnce) {
  DemandWindow w(500 * kMs);
  w.Add(0, 1);
  w.Add(10 * kMs, 8);
  EXPECT_EQ(w.Max(), 8);
}

TEST(DemandWindowTest, ALongSilenceForgetsBothBuckets) {
  DemandWindow w(500 * kMs);
  w.Add(0, 7);
  w.Add(2000 * kMs, 0);  // an idle coordinator's next sample
  EXPECT_EQ(w.Max(), 0);
}

}  // namespace
}  // namespace connthrottle
