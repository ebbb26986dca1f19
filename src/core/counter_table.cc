// counter_table.cc — laying out, attaching and reading a CounterTable.
// Changes to the counters are in owner_ops.cc, with the locking protocol.

#include "connthrottle/counter_table.h"

#include <sched.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstring>
#include <new>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "connthrottle/owner.h"
#include "core/internal/futex.h"
#include "core/internal/layout.h"
#include "core/internal/memory_order.h"
#include "core/internal/owner_ops.h"
#include "core/internal/process_identity.h"

namespace connthrottle {

using internal::Entry;
using internal::EntryAt;
using internal::OwnerAt;
using internal::TableHeader;

namespace {

// Refuse layouts larger than this: a typo, not a configuration.
constexpr uint64_t kMaxRegionBytes = uint64_t{16} << 30;

struct Layout {
  uint32_t index_buckets;
  uint64_t owners_offset, cells_offset, index_offset, entries_offset, keys_offset, total_bytes;
};

absl::StatusOr<Layout> ComputeLayout(const TableOptions& options) {
  if (options.capacity < 1 || options.capacity > internal::kMaxCapacity) {
    return absl::InvalidArgumentError(absl::StrCat("table capacity ", options.capacity,
                                                   " is outside 1..", internal::kMaxCapacity));
  }
  if (options.max_owners < 1 || options.max_owners > internal::kMaxOwners) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_owners ", options.max_owners, " is outside 1..", internal::kMaxOwners));
  }
  Layout l;
  l.index_buckets = std::bit_ceil(uint64_t{options.capacity} * 2) > (uint64_t{1} << 31)
                        ? 0
                        : static_cast<uint32_t>(std::bit_ceil(uint64_t{options.capacity} * 2));
  uint64_t offset = internal::AlignUp(sizeof(TableHeader));
  l.owners_offset = offset;
  offset += internal::AlignUp(uint64_t{options.max_owners} * sizeof(internal::OwnerRecord));
  l.cells_offset = offset;
  offset +=
      internal::AlignUp(uint64_t{options.max_owners} * options.capacity * sizeof(internal::Cell));
  l.index_offset = offset;
  offset += internal::AlignUp(uint64_t{l.index_buckets} * sizeof(internal::Bucket));
  l.entries_offset = offset;
  offset += uint64_t{options.capacity} * sizeof(Entry);
  l.keys_offset = offset;
  offset += uint64_t{options.capacity} * sizeof(internal::EntryKey);
  l.total_bytes = offset;
  if (l.total_bytes > kMaxRegionBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a table of capacity ", options.capacity, " for ", options.max_owners, " owners needs ",
        l.total_bytes, " bytes, more than the ", kMaxRegionBytes, "-byte maximum"));
  }
  return l;
}

absl::Status CheckRegion(const void* region, size_t bytes, size_t needed) {
  if (region == nullptr) return absl::InvalidArgumentError("region is null");
  if (reinterpret_cast<uintptr_t>(region) % internal::kCacheLine != 0) {
    return absl::InvalidArgumentError("region is not 64-byte aligned");
  }
  if (bytes < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("region has ", bytes, " bytes; the table needs ", needed));
  }
  return absl::OkStatus();
}

// Bounds how long a lock-free reader retries an entry whose version keeps
// changing (or stays odd because its writer died and has not been reclaimed
// yet): spin, then yield, then give up on that entry.
class ReadRetry {
 public:
  bool Again() {
    if (++tries_ > 64) sched_yield();
    return tries_ < 20000;
  }

 private:
  int tries_ = 0;
};

// Reads an entry's counters and key consistently without locking it: the
// word must be unlocked and, with Entry::version, unchanged across the read.
// Returns false when the entry holds no key (or could not be read).
// With `cumulative` false, only the key and its counts (connections to
// parked) are read: not the cumulative figures, whose `acquired` sums a cell
// of every owner.
bool ReadEntry(TableHeader* h, uint32_t index, KeyStats* out, bool cumulative = true) {
  const Entry& entry = EntryAt(h, index);
  for (ReadRetry retry; retry.Again();) {
    uint32_t v1 = entry.version.load(kAcquire);
    uint64_t w1 = entry.word.load(kAcquire);
    if (w1 & internal::Word::kLocked) continue;
    if (!entry.in_use.load(kRelaxed)) {
      std::atomic_thread_fence(kAcquire);
      if (entry.word.load(kRelaxed) != w1) continue;
      return false;
    }
    out->connections = internal::Word::Count(w1);
    out->waiters = entry.waiters.load(kRelaxed);
    out->forced = entry.forced.load(kRelaxed);
    out->reserved = entry.reserved.load(kRelaxed);
    out->parked = internal::KeyAt(h, index).parked.load(kRelaxed);
    uint64_t meta = entry.meta.load(kRelaxed);
    out->port = static_cast<int>(internal::MetaPort(meta));
    out->database = internal::MetaIsDatabase(meta)
                        ? std::optional<uint32_t>(internal::MetaDatabase(meta))
                        : std::nullopt;
    uint32_t len = std::min<uint32_t>(internal::MetaHostLen(meta), internal::kHostWords * 8);
    char host[internal::kHostWords * 8];
    const internal::EntryKey& key = internal::KeyAt(h, index);
    for (size_t w = 0; w < (len + 7) / 8; ++w) {
      uint64_t word = key.host[w].load(kRelaxed);
      std::memcpy(host + w * 8, &word, 8);
    }
    uint64_t wait_ns = 0;
    if (cumulative) {
      uint64_t acquired = entry.acquired_base.load(kRelaxed);
      for (uint32_t id = 1; id <= h->max_owners; ++id) {
        acquired += internal::CellAt(h, id, index).acquired.load(kRelaxed);
      }
      out->acquired = acquired;
      out->refused = entry.refused.load(kRelaxed);
      out->waited = key.waited.load(kRelaxed);
      out->forced_total = key.forced_total.load(kRelaxed);
      out->wakeups = key.wakeups.load(kRelaxed);
      wait_ns = key.wait_ns.load(kRelaxed);
    }
    std::atomic_thread_fence(kAcquire);
    if (entry.word.load(kRelaxed) != w1 || entry.version.load(kRelaxed) != v1) continue;
    out->host.assign(host, len);
    out->wait_time = absl::Nanoseconds(wait_ns);
    return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<size_t> CounterTable::RequiredBytes(const TableOptions& options) {
  absl::StatusOr<Layout> layout = ComputeLayout(options);
  if (!layout.ok()) return layout.status();
  return layout->total_bytes;
}

absl::StatusOr<CounterTable> CounterTable::Initialize(void* region, size_t bytes,
                                                      const TableOptions& options) {
  absl::StatusOr<Layout> layout = ComputeLayout(options);
  if (!layout.ok()) return layout.status();
  if (absl::Status s = CheckRegion(region, bytes, layout->total_bytes); !s.ok()) return s;
  uint64_t pid_namespace = 0;
  if (options.reclaim_dead_owners) {
    // Owners judge each other's liveness by pid: only within one namespace,
    // and only where /proc shows it. Find out before touching the region.
    pid_namespace = internal::PidNamespace();
    absl::StatusOr<internal::ProcessIdentity> self = internal::JudgeableSelfIdentity(pid_namespace);
    if (!self.ok()) return self.status();
  }

  std::memset(region, 0, layout->total_bytes);
  auto* h = new (region) TableHeader();
  h->layout_version = internal::kLayoutVersion;
  h->capacity = options.capacity;
  h->max_owners = options.max_owners;
  h->index_buckets = layout->index_buckets;
  h->total_bytes = layout->total_bytes;
  h->owners_offset = layout->owners_offset;
  h->cells_offset = layout->cells_offset;
  h->index_offset = layout->index_offset;
  h->entries_offset = layout->entries_offset;
  h->keys_offset = layout->keys_offset;
  h->flags = options.reclaim_dead_owners ? internal::kFlagReclaimDeadOwners : 0;
  h->pid_namespace = pid_namespace;
  char* base = static_cast<char*>(region);
  for (uint32_t i = 0; i < options.max_owners; ++i) {
    new (base + h->owners_offset + i * sizeof(internal::OwnerRecord)) internal::OwnerRecord();
  }
  for (uint64_t i = 0; i < uint64_t{options.max_owners} * options.capacity; ++i) {
    new (base + h->cells_offset + i * sizeof(internal::Cell)) internal::Cell();
  }
  for (uint32_t i = 0; i < h->index_buckets; ++i) {
    new (base + h->index_offset + i * sizeof(internal::Bucket)) internal::Bucket(0);
  }
  for (uint32_t i = 0; i < options.capacity; ++i) {
    new (base + h->entries_offset + i * sizeof(Entry)) Entry();
    new (base + h->keys_offset + i * sizeof(internal::EntryKey)) internal::EntryKey();
  }
  h->magic.store(internal::kMagic, kRelease);
  return CounterTable(h);
}

absl::StatusOr<CounterTable> CounterTable::Attach(void* region, size_t bytes) {
  if (absl::Status s = CheckRegion(region, bytes, sizeof(TableHeader)); !s.ok()) return s;
  auto* h = static_cast<TableHeader*>(region);
  uint64_t magic = h->magic.load(kAcquire);
  if (magic != internal::kMagic) {
    return absl::FailedPreconditionError(
        absl::StrCat("the region holds no connthrottle counter table (magic 0x", absl::Hex(magic),
                     ", expected 0x", absl::Hex(internal::kMagic), ")"));
  }
  if (h->layout_version != internal::kLayoutVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("the region holds a counter table of layout version ", h->layout_version,
                     "; this library reads layout version ", internal::kLayoutVersion));
  }
  TableOptions options{h->capacity, h->max_owners,
                       (h->flags & internal::kFlagReclaimDeadOwners) != 0};
  absl::StatusOr<Layout> layout = ComputeLayout(options);
  if (!layout.ok() || layout->total_bytes != h->total_bytes ||
      layout->index_buckets != h->index_buckets || layout->owners_offset != h->owners_offset ||
      layout->cells_offset != h->cells_offset || layout->index_offset != h->index_offset ||
      layout->entries_offset != h->entries_offset || layout->keys_offset != h->keys_offset) {
    return absl::FailedPreconditionError(
        "the counter table header is inconsistent with its own capacity and owner count");
  }
  if (h->total_bytes > bytes) {
    return absl::FailedPreconditionError(absl::StrCat("the counter table needs ", h->total_bytes,
                                                      " bytes but the region has ", bytes));
  }
  return CounterTable(h);
}

TableOptions CounterTable::options() const {
  return TableOptions{header_->capacity, header_->max_owners,
                      (header_->flags & internal::kFlagReclaimDeadOwners) != 0};
}

absl::StatusOr<std::unique_ptr<Owner>> CounterTable::RegisterOwner() const {
  internal::ProcessIdentity self = internal::SelfIdentity();
  if (header_->flags & internal::kFlagReclaimDeadOwners) {
    // Other owners will judge whether we are alive; refuse unless they can.
    absl::StatusOr<internal::ProcessIdentity> judgeable =
        internal::JudgeableSelfIdentity(header_->pid_namespace);
    if (!judgeable.ok()) return judgeable.status();
    self = *judgeable;
  }
  const uint64_t identity = internal::EncodeAlive(self.pid, self.start_time);
  for (uint32_t id = 1; id <= header_->max_owners; ++id) {
    internal::OwnerRecord& record = OwnerAt(header_, id);
    uint64_t expected = 0;
    if (record.identity.load(kRelaxed) != 0 ||
        !record.identity.compare_exchange_strong(expected, identity, kAcquire, kRelaxed)) {
      continue;
    }
    auto owner = std::unique_ptr<Owner>(new Owner(*this, id));
    OwnerOps(*owner).StartOnFreeRecord();
    OwnerOps(*owner).MaybeReclaimDeadOwners();
    return owner;
  }
  if (header_->flags & internal::kFlagReclaimDeadOwners) {
    // Every record is taken; adopt one whose process has died.
    for (uint32_t id = 1; id <= header_->max_owners; ++id) {
      internal::OwnerRecord& record = OwnerAt(header_, id);
      uint64_t current = record.identity.load(kAcquire);
      bool dead = false;
      if (internal::StatusOf(current) == internal::kOwnerAlive) {
        // Not our own process (same pid and start time); a dead predecessor
        // that had our (re-used) pid is fair game.
        dead = current != identity &&
               !internal::IsAlive(internal::PidOf(current), internal::StartTimeOf(current));
      } else if (internal::StatusOf(current) == internal::kOwnerReclaiming) {
        uint64_t reclaimer =
            OwnerAt(header_, internal::ReclaimerOf(current)).identity.load(kAcquire);
        dead = internal::StatusOf(reclaimer) != internal::kOwnerAlive ||
               !internal::IsAlive(internal::PidOf(reclaimer), internal::StartTimeOf(reclaimer));
      }
      if (!dead ||
          !record.identity.compare_exchange_strong(current, identity, kAcquire, kRelaxed)) {
        continue;
      }
      // A structure-lock word the dead owner left names our id too; we take
      // it over in RecoverAdoptedRecord (and LockStructure never mistakes it
      // for ours, since an owner never waits for the lock while holding it).
      auto owner = std::unique_ptr<Owner>(new Owner(*this, id));
      OwnerOps(*owner).RecoverAdoptedRecord();
      return owner;
    }
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("all ", header_->max_owners, " owner records of the counter table are in use"));
}

std::vector<KeyStats> CounterTable::Snapshot() const {
  std::vector<KeyStats> keys;
  for (uint32_t e = 0; e < header_->capacity; ++e) {
    KeyStats stats;
    if (ReadEntry(header_, e, &stats) && (stats.connections > 0 || stats.waiters > 0)) {
      keys.push_back(std::move(stats));
    }
  }
  return keys;
}

TableStats CounterTable::Stats() const {
  TableStats t;
  const TableHeader* h = header_;
  t.capacity = h->capacity;
  t.max_owners = h->max_owners;
  for (ReadRetry retry; retry.Again();) {
    uint32_t seq = h->retire_seq.load(kAcquire);
    if (seq & 1) continue;
    t.acquired = h->retired_acquired.load(kRelaxed);
    t.refused = h->retired_refused.load(kRelaxed) + h->refused_without_entry.load(kRelaxed);
    t.waited = h->retired_waited.load(kRelaxed);
    uint64_t wait_ns = h->retired_wait_ns.load(kRelaxed);
    t.forced_total = h->retired_forced_total.load(kRelaxed);
    t.wakeups = h->retired_wakeups.load(kRelaxed);
    t.entries_in_use = 0;
    for (uint32_t e = 0; e < h->capacity; ++e) {
      KeyStats k;
      if (!ReadEntry(header_, e, &k)) continue;
      if (k.connections > 0 || k.waiters > 0) ++t.entries_in_use;
      t.acquired += k.acquired;
      t.refused += k.refused;
      t.waited += k.waited;
      t.forced_total += k.forced_total;
      t.wakeups += k.wakeups;
      wait_ns += static_cast<uint64_t>(absl::ToInt64Nanoseconds(k.wait_time));
    }
    std::atomic_thread_fence(kAcquire);
    if (h->retire_seq.load(kRelaxed) != seq) continue;
    t.wait_time = absl::Nanoseconds(wait_ns);
    break;
  }
  for (uint32_t id = 1; id <= h->max_owners; ++id) {
    const internal::OwnerRecord& record = OwnerAt(header_, id);
    if (internal::StatusOf(record.identity.load(kRelaxed)) != internal::kOwnerAlive) continue;
    ++t.owners;
    t.uncounted_in_use += record.uncounted.load(kRelaxed);
  }
  t.full_table_events = h->full_table_events.load(kRelaxed);
  t.entries_created = h->entries_created.load(kRelaxed);
  t.entries_dropped = h->entries_dropped.load(kRelaxed);
  t.dead_owners_reclaimed = h->dead_owners_reclaimed.load(kRelaxed);
  t.slots_reclaimed = h->slots_reclaimed.load(kRelaxed);
  return t;
}

uint64_t CounterTable::FullTableEvents() const { return header_->full_table_events.load(kRelaxed); }

uint32_t CounterTable::ConnectionCount(const NodeKey& key, CounterLevel level) const {
  const std::optional<KeyStats> k = LookupCounts(key, level);
  return k ? k->connections : 0;
}

std::optional<KeyStats> CounterTable::Lookup(const NodeKey& key, CounterLevel level) const {
  return Find(key, level, /*cumulative=*/true);
}

std::optional<KeyStats> CounterTable::LookupCounts(const NodeKey& key, CounterLevel level) const {
  return Find(key, level, /*cumulative=*/false);
}

std::optional<KeyStats> CounterTable::Find(const NodeKey& key, CounterLevel level,
                                           bool cumulative) const {
  const bool per_database = level == CounterLevel::kDatabase;
  const uint32_t mask = header_->index_buckets - 1;
  const uint32_t tag = static_cast<uint32_t>(key.counter_hash(level));
  const internal::Bucket* buckets = internal::Buckets(header_);
  uint32_t i = tag & mask;
  for (uint32_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    uint64_t value = buckets[i].load(kAcquire);
    if (value == 0) break;
    if (static_cast<uint32_t>(value >> 32) != tag) continue;
    KeyStats k;
    if (ReadEntry(header_, static_cast<uint32_t>(value) - 1, &k, cumulative) &&
        k.host == key.host() && k.port == key.port() && k.database.has_value() == per_database &&
        (!per_database || *k.database == key.database())) {
      // A zombie entry (count and waiters at zero, kept for a quick revive)
      // is not busy, as in Snapshot().
      if (k.connections == 0 && k.waiters == 0) return std::nullopt;
      return k;
    }
  }
  return std::nullopt;
}

absl::Status CounterTable::Audit() const {
  absl::StatusOr<std::unique_ptr<Owner>> auditor = RegisterOwner();
  if (!auditor.ok()) return auditor.status();
  return OwnerOps(**auditor).Audit();
}

std::vector<Holding> CounterTable::Holders() const {
  std::vector<Holding> out;
  for (uint32_t e = 0; e < header_->capacity; ++e) {
    KeyStats key;
    if (!ReadEntry(header_, e, &key) || (key.connections == 0 && key.waiters == 0)) continue;
    for (uint32_t id = 1; id <= header_->max_owners; ++id) {
      const uint64_t identity = internal::OwnerAt(header_, id).identity.load(kAcquire);
      if (internal::StatusOf(identity) != internal::kOwnerAlive) continue;
      const internal::Hold hold =
          internal::Hold::Unpack(internal::CellAt(header_, id, e).hold.load(kAcquire));
      const bool waiting = internal::OwnerAt(header_, id).waiting_on.load(kAcquire) == e + 1;
      if (hold.total == 0 && !waiting) continue;
      out.push_back({static_cast<int>(internal::PidOf(identity)), key.host, key.port, key.database,
                     hold.total, hold.forced, hold.reserved, waiting});
    }
  }
  // A node's row before its databases' (nullopt sorts first).
  std::sort(out.begin(), out.end(), [](const Holding& a, const Holding& b) {
    return std::tie(a.host, a.port, a.database, a.pid) <
           std::tie(b.host, b.port, b.database, b.pid);
  });
  return out;
}

void CounterTable::WakeAllWaiters() const {
  for (uint32_t e = 0; e < header_->capacity; ++e) {
    Entry& entry = EntryAt(header_, e);
    if (!entry.in_use.load(kRelaxed)) continue;
    // Unconditionally: a waiter that read wake_seq before this increment
    // will not sleep; one that reads it after sees the new limit.
    entry.wake_seq.fetch_add(1, kRelease);
    internal::FutexWake(entry.wake_seq, INT_MAX);
  }
}

}  // namespace connthrottle
