// CounterTable's owners: records run out and come back, an owner gives back
// what it held, and Audit finds a count no owner holds.

#include <memory>
#include <new>
#include <vector>

#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "core/internal/layout.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/counter_table_helpers.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

TEST(CounterTableOwnerTest, OwnerRecordsRunOutAndComeBack) {
  HeapTable t(TableOptions{8, 2});
  auto a = *t->RegisterOwner();
  auto b = *t->RegisterOwner();
  absl::StatusOr<std::unique_ptr<Owner>> c = t->RegisterOwner();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(t->Stats().owners, 2u);
  b.reset();
  EXPECT_TRUE(t->RegisterOwner().ok());
}

TEST(CounterTableOwnerTest, ReleaseAllGivesBackEverySlotRecordedAgainstTheOwner) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("leak");
  (*owner->AcquireForced(key)).Release();
  // Slots whose objects the caller lost track of (as on an error path) are
  // still recorded against the owner.
  std::vector<Slot> forgotten;
  forgotten.push_back(*owner->TryAcquire(key, Limit::AtMost(5)));
  forgotten.push_back(*owner->AcquireForced(key));
  AcquireOptions reservation;
  reservation.reservation = true;
  forgotten.push_back(*owner->TryAcquire(key, Limit::AtMost(5), reservation));
  EXPECT_EQ(owner->SlotsHeld(), 3u);
  EXPECT_EQ(owner->ReleaseAll(), 3u);
  EXPECT_EQ(t->ConnectionCount(key), 0u);
  EXPECT_EQ(owner->SlotsHeld(), 0u);
  forgotten.clear();  // void after ReleaseAll: no second give-back
  EXPECT_EQ(t->ConnectionCount(key), 0u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableOwnerTest, DestroyingAnOwnerGivesBackWhatItHeld) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  // Slot objects that are never destroyed (their storage is simply abandoned,
  // as a longjmp past them would) — the owner's record still knows them.
  alignas(Slot) unsigned char abandoned[2][sizeof(Slot)];
  new (abandoned[0]) Slot(*owner->TryAcquire(Key("gone"), Limit::AtMost(5)));
  new (abandoned[1]) Slot(*owner->TryAcquire(Key("other"), Limit::AtMost(5)));
  EXPECT_EQ(t->Snapshot().size(), 2u);
  owner.reset();
  EXPECT_TRUE(t->Snapshot().empty());
  EXPECT_EQ(t->Stats().owners, 0u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableOwnerTest, AuditFindsACountThatNoOwnerHolds) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  Slot s = *owner->TryAcquire(Key("audited"), Limit::AtMost(5));
  EXPECT_TRUE(t->Audit().ok());
  // Corrupt the count behind the owners' backs.
  auto* h = static_cast<internal::TableHeader*>(t.region());
  for (uint32_t e = 0; e < h->capacity; ++e) {
    internal::Entry& entry = internal::EntryAt(h, e);
    if ((entry.word.load() & 0xfffff) == 1) entry.word.store(entry.word.load() + 1);
  }
  absl::Status audit = t->Audit();
  EXPECT_EQ(audit.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(audit), HasSubstr("count 2 vs held 1"));
}

}  // namespace
}  // namespace connthrottle::testing
