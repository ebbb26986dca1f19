// CounterTable's region: the bytes it needs, what Initialize and Attach refuse,
// an attached view sharing the counters; and Lookup of one key.

#include <cstdlib>
#include <optional>
#include <string>

#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "core/internal/layout.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/counter_table_helpers.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

// The key's row of Snapshot(), which Lookup must agree with.
std::optional<KeyStats> SnapshotRow(CounterTable& table, const NodeKey& key) {
  for (KeyStats& k : table.Snapshot()) {
    if (k.host == key.host() && k.port == key.port()) return k;
  }
  return std::nullopt;
}

TEST(CounterTableLookupTest, FindsABusyKeysEntryAndNothingOnceItIsDropped) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  const NodeKey key = Key("looked-up"), other = Key("other");
  EXPECT_FALSE(t->Lookup(key).has_value());
  absl::StatusOr<Slot> a = owner->TryAcquire(key, Limit::AtMost(4));
  absl::StatusOr<Slot> b = owner->TryAcquire(other, Limit::AtMost(4));
  absl::StatusOr<Slot> c = owner->TryAcquire(key, Limit::AtMost(4));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  std::optional<KeyStats> found = t->Lookup(key);
  std::optional<KeyStats> row = SnapshotRow(t.table(), key);
  ASSERT_TRUE(found.has_value());
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(found->host, "looked-up");
  EXPECT_EQ(found->connections, 2u);
  EXPECT_EQ(found->connections, row->connections);
  EXPECT_EQ(found->acquired, row->acquired);
  // The counts alone: the same counts, no cumulative figures.
  std::optional<KeyStats> counts = t->LookupCounts(key);
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(counts->host, "looked-up");
  EXPECT_EQ(counts->connections, 2u);
  EXPECT_EQ(counts->waiters, 0u);
  EXPECT_EQ(counts->acquired, 0u);
  a->Release();
  c->Release();
  EXPECT_FALSE(t->Lookup(key).has_value()) << "a key at zero is not busy";
  EXPECT_FALSE(t->LookupCounts(key).has_value());
  EXPECT_EQ(t->Lookup(other)->connections, 1u);
}

TEST(CounterTableLayoutTest, RequiredBytesRejectsOutOfRangeOptions) {
  for (TableOptions bad : {TableOptions{0, 1}, TableOptions{(1u << 24) + 1, 1}, TableOptions{16, 0},
                           TableOptions{16, (1u << 16) + 1}}) {
    absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes(bad);
    EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<size_t> absurd =
      CounterTable::RequiredBytes(TableOptions{1u << 24, (1u << 16) - 1});
  EXPECT_EQ(absurd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(absurd.status()), HasSubstr("bytes"));
}

TEST(CounterTableLayoutTest, InitializeRejectsBadRegions) {
  TableOptions options{8, 2};
  size_t bytes = *CounterTable::RequiredBytes(options);
  void* region = std::aligned_alloc(64, bytes + 64);
  EXPECT_EQ(CounterTable::Initialize(nullptr, bytes, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Message(CounterTable::Initialize(static_cast<char*>(region) + 8, bytes, options).status()),
      HasSubstr("aligned"));
  EXPECT_THAT(Message(CounterTable::Initialize(region, bytes - 1, options).status()),
              HasSubstr("needs"));
  std::free(region);
}

TEST(CounterTableLayoutTest, AttachRefusesRegionWithoutTable) {
  alignas(64) static char zeros[8192] = {};
  absl::StatusOr<CounterTable> t = CounterTable::Attach(zeros, sizeof(zeros));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(t.status()), HasSubstr("no connthrottle counter table"));
}

TEST(CounterTableLayoutTest, AttachRefusesOtherLayoutVersion) {
  HeapTable t(TableOptions{8, 2});
  auto* header = static_cast<internal::TableHeader*>(t.region());
  header->layout_version = internal::kLayoutVersion + 1;
  absl::StatusOr<CounterTable> attached = CounterTable::Attach(t.region(), t.size());
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(attached.status()), HasSubstr("layout version"));
  header->layout_version = internal::kLayoutVersion;
}

TEST(CounterTableLayoutTest, AttachRefusesRegionSmallerThanTable) {
  HeapTable t(TableOptions{8, 2});
  absl::StatusOr<CounterTable> attached = CounterTable::Attach(t.region(), t.size() - 64);
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(CounterTableLayoutTest, AttachedViewSharesCounters) {
  HeapTable t(TableOptions{8, 4});
  CounterTable other = *CounterTable::Attach(t.region(), t.size());
  auto owner = *other.RegisterOwner();
  Slot slot = *owner->TryAcquire(Key("shared"), Limit::AtMost(5));
  EXPECT_EQ(t->ConnectionCount(Key("shared")), 1u);
  EXPECT_EQ(other.options().capacity, 8u);
}

}  // namespace
}  // namespace connthrottle::testing
