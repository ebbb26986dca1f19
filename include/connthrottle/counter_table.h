// connthrottle/counter_table.h — the shared per-node connection counters.
//
// A CounterTable is a fixed-capacity table of counters, one entry per busy
// node (host, port; every database of a node shares its entry, node_key.h)
// and, with the optional per-database bound (limit.h), one per busy
// (node, database) below it; placed in a memory
// region that someone else owns: PostgreSQL shared memory, a POSIX shared memory segment
// (shared_segment.h) or plain heap memory in tests. Every process and thread that maps the region
// shares the counters. Before a participant opens a connection to a node it takes a slot for the
// node's key; when the connection closes it gives the slot back.
//
// Participants register as Owners. An Owner takes slots with one of three
// explicit intents — there is no default path that skips counting:
//
//   TryAcquire      optional: a slot only if one is free now; never waits.
//   AcquireWaiting  waits until a slot frees, the deadline passes or the
//                   caller's interrupt check says stop.
//   AcquireForced   counts the connection even above the limit (connections
//                   that must exist); forced slots are counted separately.
//
// Every acquire returns a move-only Slot that gives the slot back exactly
// once: by Slot::Release() or on destruction.
//
// Promises (each is tested, see src/core/counter_table_*_test.cc):
//   * Strict limit: optional and waiting acquires never raise a key's count to
//     more than the limit in force at that decision, under any interleaving of
//     threads and processes. Only forced acquires may exceed it.
//   * Waiters first: an optional acquire, and a waiting acquire that has not
//     queued yet, leave a freed slot to the waiters already queued for that
//     key, so the first connection a query needs is not starved by others'
//     extra parallelism.
//   * Per-key wake-up: giving back a slot wakes one waiter of that key (a futex
//     on the shared region, so threads and processes alike); a waiter that
//     gives up passes the wake-up on. WakeAllWaiters() wakes every waiter, e.g.
//     after a limit was raised.
//   * Entries are dropped when their count reaches zero and nobody waits on
//     them, so a table of capacity C tracks C busy keys however many keys it
//     has seen. When the table is full, the caller's FullTablePolicy decides,
//     and every such event is counted in TableStats::full_table_events.
//   * Every slot is attributed to its Owner in the shared region, so an owner
//     that goes away without releasing (a backend exiting on FATAL, or with
//     reclamation enabled a process killed at any instruction) can be given
//     back exactly; see owner.h.
//
// Thread- and process-safety: CounterTable is a cheap copyable view; all of
// its methods may be called concurrently from any thread of any process that
// maps the region. Owners are thread-compatible: one thread at a time.
//
// NOTE (deliberate trade-offs):
//   * Every slot is recorded twice: in its key's counter and in the cell of
//     the owner that holds it. That is what lets a process killed at any
//     instruction be given back exactly (the entry is recomputed from the
//     cells of live owners). Memory: max_owners * capacity * 16 bytes.
//   * An optional acquire of a key the owner used before, and its release,
//     are one compare-and-swap on the key's counter word each. Everything
//     else (new keys, waits, forced and reserved slots, refusals) takes a
//     word-sized lock on the entry for a few dozen instructions. The protocol
//     is written at the top of src/owner_ops.cc.
//   * Waiters re-check the interrupt callback every AcquireOptions::poll_interval
//     (10 ms by default); a freed slot wakes them at once, without that tick.
//     A woken waiter whose own limit is lower than the releaser's does not
//     pass the wake-up on; another waiter then takes the slot at its next tick.
//   * Cumulative per-key statistics live as long as the key is busy; when an
//     entry is dropped its figures are folded into the table totals.

#ifndef CONNTHROTTLE_COUNTER_TABLE_H_
#define CONNTHROTTLE_COUNTER_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/slot.h"

namespace connthrottle {

namespace internal {
struct TableHeader;
}  // namespace internal

class Owner;

// What happens when a new key needs an entry and all `capacity` entries are
// busy. Either way the event is counted in TableStats::full_table_events.
// Whether `status` is the refusal of FullTablePolicy::kRefuse (a full table),
// as opposed to a key at its limit; both are ResourceExhausted.
bool IsTableFullError(const absl::Status& status);

enum class FullTablePolicy {
  // Let the connection through without counting it (what the reference system
  // does silently). The Slot has kind kUncounted and TableStats shows it in
  // uncounted_in_use until it is released.
  kAdmitUncounted,
  // Refuse with ResourceExhausted.
  kRefuse,
};

struct TableOptions {
  // Distinct keys that can be busy at once. 1 .. 1<<24.
  uint32_t capacity = 1024;
  // Owners that can be registered at once. 1 .. 65535.
  uint32_t max_owners = 128;
  // Whether live participants reclaim the slots of owners whose process died
  // (standalone segments). Inside PostgreSQL the postmaster re-initialises
  // shared memory after a crash instead, so the extension leaves this off.
  // Owners judge each other by pid and start time, so with this on every
  // owner must run in the PID namespace of the process that initialised the
  // table, with a /proc of that namespace (hidepid is fine: a pid that
  // exists but is hidden counts as alive). Initialize and RegisterOwner
  // refuse a process for which that does not hold: its death could not be
  // told from its life.
  bool reclaim_dead_owners = false;
};

struct AcquireOptions {
  // Take the slot as a reservation (SlotKind::kReservation) rather than for a
  // connection that is being opened now. Ignored by AcquireForced.
  bool reservation = false;
  FullTablePolicy when_full = FullTablePolicy::kAdmitUncounted;
  // How often a waiting acquire consults its interrupt callback (a freed slot
  // wakes it at once regardless). Clamped to 1 ms .. 1 h.
  absl::Duration poll_interval = absl::Milliseconds(10);
  // When the caller's wait began, for a waiting acquire that resumes a wait
  // it gave up with Cancelled to handle an interrupt (PostgreSQL's config
  // reload, say). The wait is then counted once in `waited`, and the wait
  // time and the timeout message cover all of it. A wait that ends Cancelled
  // counts neither as refused nor in wait_time: it may yet be resumed.
  std::optional<absl::Time> wait_began;
};

// What one registered owner holds on, or waits for, one counter.
struct Holding {
  int pid = 0;  // the owner's process
  std::string host;
  int port = 0;
  std::optional<uint32_t> database;  // set for a database's counter, unset for the node's
  uint32_t connections = 0;          // slots held, of every kind
  uint32_t forced = 0;               // of which forced
  uint32_t reserved = 0;             // of which reservations
  bool waiting = false;              // queued for a slot of this key now
};

// One busy counter (a node's, or a database's on a node), read without
// locking but consistently: the counts agree with each other (a read that
// raced with a change is retried).
struct KeyStats {
  std::string host;
  int port = 0;
  std::optional<uint32_t> database;  // set for a database's counter, unset for the node's
  uint32_t connections = 0;          // slots held, of every kind
  uint32_t forced = 0;               // of which taken by forced acquires
  uint32_t reserved = 0;             // of which taken as reservations
  uint32_t waiters = 0;              // waiting acquires queued now
  uint32_t parked = 0;               // of connections: idle in a session's cache (Owner::Park)
  // Cumulative since the entry was created.
  uint64_t acquired = 0;      // slots granted (every kind)
  uint64_t refused = 0;       // optional acquires refused, waits that gave up
  uint64_t waited = 0;        // waiting acquires that had to queue
  uint64_t forced_total = 0;  // forced acquires granted
  uint64_t wakeups = 0;       // times a queued waiter was woken and re-checked
  absl::Duration wait_time;   // total time queued
};

struct TableStats {
  uint32_t capacity = 0;
  uint32_t entries_in_use = 0;  // busy keys
  uint32_t max_owners = 0;
  uint32_t owners = 0;             // registered now
  uint64_t uncounted_in_use = 0;   // kUncounted slots held now
  uint64_t full_table_events = 0;  // acquires that found the table full
  uint64_t entries_created = 0;
  uint64_t entries_dropped = 0;
  uint64_t dead_owners_reclaimed = 0;
  uint64_t slots_reclaimed = 0;
  // Cumulative over every key the table has seen, live or dropped.
  uint64_t acquired = 0;
  uint64_t refused = 0;
  uint64_t waited = 0;
  uint64_t forced_total = 0;
  uint64_t wakeups = 0;  // times a queued waiter was woken (or its limit changed) and re-checked
  absl::Duration wait_time;
};

class CounterTable {
 public:
  // Bytes a region needs for a table with these options, or InvalidArgument
  // when an option is out of range.
  static absl::StatusOr<size_t> RequiredBytes(const TableOptions& options);

  // Lays out a new, empty table in [region, region + bytes), which must be
  // 64-byte aligned and at least RequiredBytes(options) long. Nobody else may
  // use the region during the call. The header is published last, so a
  // concurrent Attach sees either no table or a complete one.
  // FailedPrecondition, with the region untouched, when reclaim_dead_owners
  // is on and the caller's liveness could not be judged (see TableOptions).
  static absl::StatusOr<CounterTable> Initialize(void* region, size_t bytes,
                                                 const TableOptions& options);

  // Uses a table that Initialize laid out (possibly in another process).
  // FailedPrecondition when the region holds no table, a table of another
  // layout version, or one whose size does not match `bytes`.
  static absl::StatusOr<CounterTable> Attach(void* region, size_t bytes);

  // Registers a participant. ResourceExhausted when max_owners are registered;
  // FailedPrecondition when the table reclaims dead owners and the caller's
  // liveness could not be judged by the others (see TableOptions).
  // The Owner must be destroyed before the region is unmapped.
  absl::StatusOr<std::unique_ptr<Owner>> RegisterOwner() const;

  // The busy keys, each read consistently.
  std::vector<KeyStats> Snapshot() const;
  TableStats Stats() const;
  // TableStats::full_table_events alone: one atomic load, for callers that
  // look after every acquire whether the table was full meanwhile.
  uint64_t FullTableEvents() const;

  // The slots `key`'s node (or with kDatabase, its database on the node)
  // holds now (0 when it is not busy).
  uint32_t ConnectionCount(const NodeKey& key, CounterLevel level = CounterLevel::kNode) const;
  // The entry of `key`'s counter at `level`, read consistently without
  // locking; nullopt when it is not busy. A lookup in the index: cheap
  // enough to call every tick.
  std::optional<KeyStats> Lookup(const NodeKey& key,
                                 CounterLevel level = CounterLevel::kNode) const;
  // As Lookup, but reads only the key and its counts (connections, forced,
  // reserved, waiters, parked); the cumulative figures are left at zero.
  // For callers that look after every task: it does not sum the per-owner
  // `acquired` cells.
  std::optional<KeyStats> LookupCounts(const NodeKey& key,
                                       CounterLevel level = CounterLevel::kNode) const;

  // Who holds and who waits: one row per live owner and busy key it holds
  // slots of or waits for, ordered by key then pid. Read without locks, for
  // diagnosis: each row is what its owner recorded when read, so rows may
  // be from slightly different moments (use Audit() for an exact check).
  std::vector<Holding> Holders() const;

  // Checks the table's bookkeeping: for every entry, that its count (and
  // forced, reserved) equals the sum of what the registered owners hold on
  // it, and its waiters the owners queued on it; that no free entry or free
  // owner record holds anything; and that the index finds every entry in use.
  // OK, or DataLoss listing each difference. Exact at any moment: it reclaims
  // dead owners first (with reclaim_dead_owners), then holds the structure
  // lock and each entry's lock in turn, through an owner it registers for the
  // call (ResourceExhausted when no owner record is free). Other operations
  // wait for it; use it in tests and diagnostics, not on a hot path.
  absl::Status Audit() const;

  // Wakes every waiter of every key, so that each re-evaluates its limit.
  // Call after raising a limit.
  void WakeAllWaiters() const;

  TableOptions options() const;

 private:
  friend class Owner;
  friend class OwnerOps;
  explicit CounterTable(internal::TableHeader* header) : header_(header) {}
  std::optional<KeyStats> Find(const NodeKey& key, CounterLevel level, bool cumulative) const;

  internal::TableHeader* header_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_COUNTER_TABLE_H_
