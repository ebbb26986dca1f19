#include "connthrottle/limit.h"

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace connthrottle {
namespace {

using ::testing::HasSubstr;

// Expects `limits` to be refused as InvalidArgument with a message naming
// `field` and the bad value.
void ExpectRefused(const PoolLimits& limits, const std::string& field, int value) {
  absl::Status s = limits.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(std::to_string(value))) << s;
}

// ---- PoolLimits::Validate ---------------------------------------------------

TEST(PoolLimitsValidateTest, AcceptsTheDefaults) { EXPECT_TRUE(PoolLimits{}.Validate().ok()); }

TEST(PoolLimitsValidateTest, AcceptsEverySpecialValue) {
  PoolLimits limits;
  limits.max_shared_pool_size = kThrottlingOff;
  limits.local_shared_pool_size = kNeverConnectToSelf;
  EXPECT_TRUE(limits.Validate().ok());
  limits.max_shared_pool_size = kDeriveFromMaxConnections;
  limits.local_shared_pool_size = kHalfOfMaxClientConnections;
  EXPECT_TRUE(limits.Validate().ok());
}

TEST(PoolLimitsValidateTest, AcceptsEveryFieldAtKMaxSlotsPerKey) {
  PoolLimits limits{kMaxSlotsPerKey, kMaxSlotsPerKey, kMaxSlotsPerKey, kMaxSlotsPerKey};
  EXPECT_TRUE(limits.Validate().ok());
}

TEST(PoolLimitsValidateTest, AcceptsOneForTheMaxFigures) {
  PoolLimits limits;
  limits.max_connections = 1;
  limits.max_client_connections = 1;
  EXPECT_TRUE(limits.Validate().ok());
}

TEST(PoolLimitsValidateTest, RefusesMaxSharedPoolSizeBelowMinusOne) {
  PoolLimits limits;
  limits.max_shared_pool_size = -2;
  ExpectRefused(limits, "max_shared_pool_size", -2);
}

TEST(PoolLimitsValidateTest, RefusesMaxSharedPoolSizeAboveKMaxSlotsPerKey) {
  PoolLimits limits;
  limits.max_shared_pool_size = kMaxSlotsPerKey + 1;
  ExpectRefused(limits, "max_shared_pool_size", kMaxSlotsPerKey + 1);
}

TEST(PoolLimitsValidateTest, RefusesMaxConnectionsZero) {
  PoolLimits limits;
  limits.max_connections = 0;
  ExpectRefused(limits, "max_connections", 0);
}

TEST(PoolLimitsValidateTest, RefusesNegativeMaxConnections) {
  PoolLimits limits;
  limits.max_connections = -1;
  ExpectRefused(limits, "max_connections", -1);
}

TEST(PoolLimitsValidateTest, RefusesMaxConnectionsAboveKMaxSlotsPerKey) {
  PoolLimits limits;
  limits.max_connections = kMaxSlotsPerKey + 1;
  ExpectRefused(limits, "max_connections", kMaxSlotsPerKey + 1);
}

TEST(PoolLimitsValidateTest, RefusesLocalSharedPoolSizeBelowMinusOne) {
  PoolLimits limits;
  limits.local_shared_pool_size = -2;
  ExpectRefused(limits, "local_shared_pool_size", -2);
}

TEST(PoolLimitsValidateTest, RefusesLocalSharedPoolSizeAboveKMaxSlotsPerKey) {
  PoolLimits limits;
  limits.local_shared_pool_size = kMaxSlotsPerKey + 1;
  ExpectRefused(limits, "local_shared_pool_size", kMaxSlotsPerKey + 1);
}

TEST(PoolLimitsValidateTest, RefusesMaxClientConnectionsZero) {
  PoolLimits limits;
  limits.max_client_connections = 0;
  ExpectRefused(limits, "max_client_connections", 0);
}

TEST(PoolLimitsValidateTest, RefusesNegativeMaxClientConnections) {
  PoolLimits limits;
  limits.max_client_connections = -5;
  ExpectRefused(limits, "max_client_connections", -5);
}

TEST(PoolLimitsValidateTest, RefusesMaxClientConnectionsAboveKMaxSlotsPerKey) {
  PoolLimits limits;
  limits.max_client_connections = kMaxSlotsPerKey + 1;
  ExpectRefused(limits, "max_client_connections", kMaxSlotsPerKey + 1);
}

TEST(PoolLimitsValidateTest, RefusesIntMinInEveryField) {
  EXPECT_FALSE((PoolLimits{INT32_MIN, 100, 0, 100}).Validate().ok());
  EXPECT_FALSE((PoolLimits{0, INT32_MIN, 0, 100}).Validate().ok());
  EXPECT_FALSE((PoolLimits{0, 100, INT32_MIN, 100}).Validate().ok());
  EXPECT_FALSE((PoolLimits{0, 100, 0, INT32_MIN}).Validate().ok());
}

// ---- Limit::ForRemote ------------------------------------------------------

TEST(LimitForRemoteTest, MinusOneIsUnlimited) {
  PoolLimits limits;
  limits.max_shared_pool_size = kThrottlingOff;
  Limit limit = Limit::ForRemote(limits);
  EXPECT_TRUE(limit.unlimited());
  EXPECT_TRUE(limit.Admits(1000000, 1000000));
}

TEST(LimitForRemoteTest, ZeroDerivesFromMaxConnections) {
  PoolLimits limits;
  limits.max_shared_pool_size = kDeriveFromMaxConnections;
  limits.max_connections = 37;
  Limit limit = Limit::ForRemote(limits);
  EXPECT_FALSE(limit.unlimited());
  EXPECT_EQ(limit.max(), 37u);
  EXPECT_TRUE(limit.Admits(36, 0));
  EXPECT_FALSE(limit.Admits(37, 0));
}

TEST(LimitForRemoteTest, PositiveValueIsTheLimit) {
  PoolLimits limits;
  limits.max_shared_pool_size = 5;
  limits.max_connections = 100;
  Limit limit = Limit::ForRemote(limits);
  EXPECT_FALSE(limit.unlimited());
  EXPECT_EQ(limit.max(), 5u);
  EXPECT_TRUE(limit.Admits(4, 0));
  EXPECT_FALSE(limit.Admits(5, 0));
}

TEST(LimitForRemoteTest, RemoteLimitsWait) {
  PoolLimits limits;
  limits.max_shared_pool_size = 5;
  EXPECT_FALSE(Limit::ForRemote(limits).never_waits());
  limits.max_shared_pool_size = kDeriveFromMaxConnections;
  EXPECT_FALSE(Limit::ForRemote(limits).never_waits());
  limits.max_shared_pool_size = kThrottlingOff;
  EXPECT_FALSE(Limit::ForRemote(limits).never_waits());
}

TEST(LimitForRemoteTest, IgnoresTheLocalSettings) {
  PoolLimits limits;
  limits.max_shared_pool_size = 5;
  limits.local_shared_pool_size = kNeverConnectToSelf;
  limits.max_client_connections = 1;
  EXPECT_EQ(Limit::ForRemote(limits).max(), 5u);
}

// ---- Limit::ForLocal -------------------------------------------------------

TEST(LimitForLocalTest, MinusOneRefusesEverything) {
  PoolLimits limits;
  limits.local_shared_pool_size = kNeverConnectToSelf;
  Limit limit = Limit::ForLocal(limits, 0);
  EXPECT_FALSE(limit.unlimited());
  EXPECT_FALSE(limit.Admits(0, 0));
}

TEST(LimitForLocalTest, ZeroIsHalfOfMaxClientConnections) {
  PoolLimits limits;
  limits.local_shared_pool_size = kHalfOfMaxClientConnections;
  limits.max_client_connections = 100;
  Limit limit = Limit::ForLocal(limits, 0);
  EXPECT_EQ(limit.max(), 50u);
  EXPECT_TRUE(limit.Admits(49, 0));
  EXPECT_FALSE(limit.Admits(50, 0));
}

TEST(LimitForLocalTest, HalfOfAnOddMaxClientConnectionsRoundsDown) {
  PoolLimits limits;
  limits.local_shared_pool_size = kHalfOfMaxClientConnections;
  limits.max_client_connections = 7;
  EXPECT_EQ(Limit::ForLocal(limits, 0).max(), 3u);
}

TEST(LimitForLocalTest, HalfIsAtLeastOneSoOnlyMinusOneMeansNever) {
  PoolLimits limits;
  limits.local_shared_pool_size = kHalfOfMaxClientConnections;
  limits.max_client_connections = 1;
  EXPECT_EQ(Limit::ForLocal(limits, 0).max(), 1u);
  EXPECT_TRUE(Limit::ForLocal(limits, 0).Admits(0, 0));
}

TEST(LimitForLocalTest, PositiveValueIsTheLimit) {
  PoolLimits limits;
  limits.local_shared_pool_size = 4;
  limits.max_client_connections = 100;
  Limit limit = Limit::ForLocal(limits, 0);
  EXPECT_EQ(limit.max(), 4u);
  EXPECT_TRUE(limit.Admits(3, 0));
  EXPECT_FALSE(limit.Admits(4, 0));
}

TEST(LimitForLocalTest, NeverWaits) {
  PoolLimits limits;
  for (int local : {kNeverConnectToSelf, kHalfOfMaxClientConnections, 4}) {
    limits.local_shared_pool_size = local;
    EXPECT_TRUE(Limit::ForLocal(limits, 0).never_waits()) << "local_shared_pool_size " << local;
  }
}

TEST(LimitForLocalTest, RefusesWhenActiveClientBackendsReachTheLimit) {
  PoolLimits limits;
  limits.local_shared_pool_size = 5;
  EXPECT_TRUE(Limit::ForLocal(limits, 4).Admits(0, 0));
  EXPECT_FALSE(Limit::ForLocal(limits, 5).Admits(0, 0));
  EXPECT_FALSE(Limit::ForLocal(limits, 6).Admits(0, 0));
}

TEST(LimitForLocalTest, RefusesWhenActiveClientBackendsReachHalfOfMaxClientConnections) {
  PoolLimits limits;
  limits.local_shared_pool_size = kHalfOfMaxClientConnections;
  limits.max_client_connections = 10;
  EXPECT_TRUE(Limit::ForLocal(limits, 4).Admits(0, 0));
  EXPECT_FALSE(Limit::ForLocal(limits, 5).Admits(0, 0));
}

TEST(LimitForLocalTest, NegativeActiveClientBackendsCountAsNone) {
  PoolLimits limits;
  limits.local_shared_pool_size = 5;
  EXPECT_TRUE(Limit::ForLocal(limits, -3).Admits(0, 0));
  EXPECT_TRUE(Limit::ForLocal(limits, -3).Admits(4, 0));
}

TEST(LimitForLocalTest, AppliesEvenWhenRemoteThrottlingIsOff) {
  PoolLimits limits;
  limits.max_shared_pool_size = kThrottlingOff;
  limits.local_shared_pool_size = 2;
  Limit limit = Limit::ForLocal(limits, 0);
  EXPECT_FALSE(limit.unlimited());
  EXPECT_FALSE(limit.Admits(2, 0));
}

// ---- Limit::ForNode --------------------------------------------------------

TEST(LimitForNodeTest, LocalNodeGetsTheLocalLimit) {
  PoolLimits limits;
  limits.max_shared_pool_size = 7;
  limits.local_shared_pool_size = 3;
  EXPECT_EQ(Limit::ForNode(limits, /*local=*/true, 1), Limit::ForLocal(limits, 1));
  EXPECT_TRUE(Limit::ForNode(limits, /*local=*/true, 1).never_waits());
}

TEST(LimitForNodeTest, OtherNodesGetTheRemoteLimit) {
  PoolLimits limits;
  limits.max_shared_pool_size = 7;
  limits.local_shared_pool_size = 3;
  EXPECT_EQ(Limit::ForNode(limits, /*local=*/false, 1), Limit::ForRemote(limits));
  EXPECT_EQ(Limit::ForNode(limits, /*local=*/false, 1).max(), 7u);
}

// ---- Limit::Admits ---------------------------------------------------------

TEST(LimitAdmitsTest, AdmitsWhileCountIsBelowMax) {
  Limit limit = Limit::AtMost(3);
  EXPECT_TRUE(limit.Admits(0, 0));
  EXPECT_TRUE(limit.Admits(2, 0));
  EXPECT_FALSE(limit.Admits(3, 0));
}

TEST(LimitAdmitsTest, QueuedWaitersComeFirst) {
  // Admits iff in_use + queued < max.
  Limit limit = Limit::AtMost(3);
  EXPECT_TRUE(limit.Admits(1, 1));
  EXPECT_FALSE(limit.Admits(2, 1));
  EXPECT_FALSE(limit.Admits(1, 2));
  EXPECT_TRUE(limit.Admits(0, 2));
  EXPECT_FALSE(limit.Admits(0, 3));
}

TEST(LimitAdmitsTest, AgreesWithCountPlusWaitersBelowMaxExhaustively) {
  for (uint32_t max = 0; max < 8; ++max) {
    Limit limit = Limit::AtMost(max);
    for (uint32_t in_use = 0; in_use < 12; ++in_use) {
      for (uint32_t queued = 0; queued < 12; ++queued) {
        EXPECT_EQ(limit.Admits(in_use, queued), in_use + queued < max)
            << "max " << max << " in_use " << in_use << " queued " << queued;
      }
    }
  }
}

TEST(LimitAdmitsTest, RefusesWhenForcedSlotsPushedTheCountAboveMax) {
  Limit limit = Limit::AtMost(3);
  EXPECT_FALSE(limit.Admits(5, 0));
  EXPECT_FALSE(limit.Admits(UINT32_MAX, 0));
  EXPECT_FALSE(limit.Admits(4, UINT32_MAX));
}

TEST(LimitAdmitsTest, HugeQueuesDoNotOverflow) {
  Limit limit = Limit::AtMost(10);
  EXPECT_FALSE(limit.Admits(1, UINT32_MAX));
  EXPECT_FALSE(limit.Admits(UINT32_MAX - 1, 2));
}

TEST(LimitAdmitsTest, UnlimitedAdmitsEverything) {
  Limit limit = Limit::Unlimited();
  EXPECT_TRUE(limit.unlimited());
  EXPECT_TRUE(limit.Admits(0, 0));
  EXPECT_TRUE(limit.Admits(UINT32_MAX, UINT32_MAX));
  EXPECT_FALSE(limit.never_waits());
}

TEST(LimitAdmitsTest, AtMostZeroAdmitsNothing) {
  Limit limit = Limit::AtMost(0);
  EXPECT_FALSE(limit.unlimited());
  EXPECT_EQ(limit.max(), 0u);
  EXPECT_FALSE(limit.Admits(0, 0));
}

TEST(LimitAdmitsTest, AtMostKMaxSlotsPerKeyIsNotUnlimited) {
  Limit limit = Limit::AtMost(kMaxSlotsPerKey);
  EXPECT_FALSE(limit.unlimited());
  EXPECT_FALSE(limit.Admits(kMaxSlotsPerKey, 0));
}

// ---- Limit::ToString -------------------------------------------------------

TEST(LimitToStringTest, DescribesEachKind) {
  EXPECT_EQ(Limit::Unlimited().ToString(), "unlimited");
  EXPECT_EQ(Limit::AtMost(3).ToString(), "at most 3");
  PoolLimits limits;
  limits.local_shared_pool_size = 4;
  std::string local = Limit::ForLocal(limits, 2).ToString();
  EXPECT_THAT(local, HasSubstr("at most 4"));
  EXPECT_THAT(local, HasSubstr("local"));
  EXPECT_THAT(local, HasSubstr("2 client backends"));
}

}  // namespace
}  // namespace connthrottle
