// counter_table_benchmark.cc — the cost of an optional acquire + release.
//
// Three implementations run the same cases in the same binary and the same run,
// so their figures can be compared directly (bench/ratios.py prints the table):
//
//   BM_Connthrottle_*        Owner::TryAcquire + Slot::Release on a CounterTable
//                            in heap memory (capacity 16384, 16 owners).
//   BM_ReferenceMutexHash_*  the reference design (Citus): ONE process-shared
//                            pthread mutex over a hash table keyed by the full
//                            fixed-size key struct {host[256], port, database},
//                            hashed over all its bytes and compared with memcmp;
//                            inserted on first acquire, erased when the count
//                            reaches zero.
//   BM_AtomicFloor_*         the floor: one std::atomic<uint32_t> per key on its
//                            own cache line, a compare-and-swap loop that
//                            increments only below the limit, fetch_sub to
//                            release. No lookup at all.
//
// And for the optional per-database bound (limit.h), where every acquire
// takes a slot of the key's database counter and one of its node counter:
//
//   BM_ConnthrottlePerDatabase_*  the same Owner calls under a limit with a
//                            per-database bound (busy keys hold their busy
//                            slot at both levels).
//   BM_AtomicFloorTwoLevel_* its floor: two bare counters per key (the
//                            database's, then the node's), each as above.
//
// Cases (one iteration = one acquire + one release):
//
//   _Optional/busy_keys:N          single thread, round-robin over the N busy
//                                  keys (key i % N at iteration i).
//   _OptionalFixedKey/busy_keys:N  single thread, always key 0 while N keys are
//                                  busy.
//   _TwoThreadsDistinctKeys        two threads, thread t uses key t (2 busy keys).
//   _TwoThreadsOneKey              two threads, both on key 0 (1 busy key).
//   _FallingToZero/keys:N          single thread, round-robin over N idle keys:
//                                  every release takes a key's count to zero,
//                                  and the next acquire of it brings it back.
//   _TwoThreadsFallingToZeroOwnKeys  two threads, thread t uses idle key t.
//   _TwoThreadsFallingToZeroOneKey   two threads, both on idle key 0 (its count
//                                  falls to zero whenever both have released).
//
// A busy key holds one slot taken by a separate setup participant for the whole
// run, so its entry stays in the table and the measured acquire never creates
// or drops an entry. An idle key holds none: in connthrottle its entry turns
// zombie at zero and is revived by the next acquire; the reference design
// erases it at zero and inserts it again (issue 14). Limits are large enough that every acquire
// succeeds; a refused acquire is reported as an error. Keys (NodeKey, the reference key struct) are
// built once up front; building them is not part of the acquire.
//
// Every benchmark uses real (wall-clock) time. For the two-thread cases Google
// Benchmark divides the wall time by the iterations of BOTH threads, so the
// figure is the inverse of the aggregate throughput: ns per acquire + release
// pair, comparable across the implementations and with the single-thread cases.

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "benchmark/benchmark.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"

namespace connthrottle {
namespace {

constexpr uint32_t kCapacity = 16384;
constexpr uint32_t kMaxOwners = 16;
constexpr uint32_t kLimit = 1000000;  // every acquire succeeds
constexpr int kPort = 5432;
constexpr uint32_t kDatabase = 1;

std::string HostName(int i) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "worker-%05d.cluster.internal", i);
  return buf;
}

std::string ToStd(const absl::Status& status) { return std::string(status.ToString()); }

// Environments are built once per (implementation, key count, busy or idle)
// and kept for the whole process, so repeated runs and both threads of a
// threaded run share them. Between runs every environment holds exactly its
// busy slots (none, for idle keys).
template <class Env>
absl::StatusOr<Env*> GetEnv(int keys, bool busy = true) {
  static std::mutex mu;
  static std::map<std::pair<int, bool>, std::unique_ptr<Env>>* envs =
      new std::map<std::pair<int, bool>, std::unique_ptr<Env>>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = envs->find({keys, busy});
  if (it == envs->end()) {
    absl::StatusOr<std::unique_ptr<Env>> env = Env::Create(keys, busy);
    if (!env.ok()) return env.status();
    it = envs->emplace(std::make_pair(keys, busy), *std::move(env)).first;
  }
  return it->second.get();
}

// ---------------------------------------------------------------------------
// connthrottle

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// kReclaim: the table is set up as a standalone segment's is, tracking
// owners so that live processes reclaim what dead ones held (issue: exact
// reclamation); the hot paths are the same, the cost shows here.
// The limit of every acquire: with kPerDatabase, a per-database bound as
// large as the node's, so that both levels are counted and never refuse.
template <bool kPerDatabase>
Limit BenchLimit() {
  return kPerDatabase ? Limit::AtMost(kLimit).WithPerDatabase(kLimit) : Limit::AtMost(kLimit);
}

template <bool kReclaim, bool kPerDatabase = false>
class ConnthrottleEnv {
 public:
  static absl::StatusOr<std::unique_ptr<ConnthrottleEnv>> Create(int busy_keys, bool busy) {
    auto env = std::unique_ptr<ConnthrottleEnv>(new ConnthrottleEnv());
    // Two counters per busy key with the per-database bound.
    const TableOptions options{.capacity = kCapacity * (kPerDatabase ? 2 : 1),
                               .max_owners = kMaxOwners,
                               .reclaim_dead_owners = kReclaim};
    absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes(options);
    if (!bytes.ok()) return bytes.status();
    const size_t rounded = (*bytes + 63) / 64 * 64;
    env->region_.reset(std::aligned_alloc(64, rounded));
    if (env->region_ == nullptr) return absl::ResourceExhaustedError("aligned_alloc failed");
    absl::StatusOr<CounterTable> table =
        CounterTable::Initialize(env->region_.get(), rounded, options);
    if (!table.ok()) return table.status();
    env->table_.emplace(*table);
    for (int i = 0; i < busy_keys; ++i) {
      absl::StatusOr<NodeKey> key = NodeKey::Create(HostName(i), kPort, kDatabase);
      if (!key.ok()) return key.status();
      env->keys_.push_back(*std::move(key));
    }
    absl::StatusOr<std::unique_ptr<Owner>> setup = env->table_->RegisterOwner();
    if (!setup.ok()) return setup.status();
    env->setup_owner_ = *std::move(setup);
    for (const NodeKey& key : busy ? env->keys_ : std::vector<NodeKey>()) {
      absl::StatusOr<Slot> slot = env->setup_owner_->TryAcquire(key, BenchLimit<kPerDatabase>());
      if (!slot.ok()) return slot.status();
      env->busy_slots_.push_back(*std::move(slot));
    }
    const uint32_t levels = kPerDatabase ? 2 : 1;
    if (env->table_->Stats().entries_in_use !=
        static_cast<uint32_t>(busy ? busy_keys : 0) * levels) {
      return absl::InternalError("busy keys did not all get an entry");
    }
    return env;
  }

  const CounterTable& table() const { return *table_; }
  const NodeKey& key(size_t i) const { return keys_[i]; }
  uint32_t Count(size_t i) const { return table_->ConnectionCount(keys_[i]); }

 private:
  ConnthrottleEnv() = default;

  // Destroyed in reverse order: busy slots, their owner, then the region.
  std::unique_ptr<void, FreeDeleter> region_;
  std::optional<CounterTable> table_;
  std::vector<NodeKey> keys_;
  std::unique_ptr<Owner> setup_owner_;
  std::vector<Slot> busy_slots_;
};

template <bool kReclaim, bool kPerDatabase = false>
struct ConnthrottleImpl {
  static constexpr const char* kName = kPerDatabase ? "ConnthrottlePerDatabase"
                                       : kReclaim   ? "ConnthrottleReclaiming"
                                                    : "Connthrottle";
  using Env = ConnthrottleEnv<kReclaim, kPerDatabase>;

  // One participant per benchmark thread: Owners are thread-compatible.
  class Worker {
   public:
    explicit Worker(Env& env) : env_(env) {
      absl::StatusOr<std::unique_ptr<Owner>> owner = env.table().RegisterOwner();
      if (owner.ok()) {
        owner_ = *std::move(owner);
      } else {
        error_ = ToStd(owner.status());
      }
    }
    const std::string& error() const { return error_; }

    bool AcquireRelease(size_t i) {
      absl::StatusOr<Slot> slot = owner_->TryAcquire(env_.key(i), limit_);
      if (ABSL_PREDICT_FALSE(!slot.ok())) {
        error_ = ToStd(slot.status());
        return false;
      }
      slot->Release();
      return true;
    }

   private:
    Env& env_;
    const Limit limit_ = BenchLimit<kPerDatabase>();
    std::unique_ptr<Owner> owner_;
    std::string error_;
  };
};

using Connthrottle = ConnthrottleImpl<false>;
using ConnthrottleReclaiming = ConnthrottleImpl<true>;
using ConnthrottlePerDatabase = ConnthrottleImpl<false, true>;

// ---------------------------------------------------------------------------
// Reference design: one process-shared mutex over a hash table keyed by the
// full fixed-size key struct.

struct RefKey {
  char host[256];
  int32_t port;
  uint32_t database;
};
static_assert(sizeof(RefKey) == 264, "the key struct must have no padding");

struct RefKeyHash {
  size_t operator()(const RefKey& key) const {
    return absl::Hash<absl::string_view>()(
        absl::string_view(reinterpret_cast<const char*>(&key), sizeof(key)));
  }
};

struct RefKeyEq {
  bool operator()(const RefKey& a, const RefKey& b) const {
    return std::memcmp(&a, &b, sizeof(RefKey)) == 0;
  }
};

class ReferenceEnv {
 public:
  static absl::StatusOr<std::unique_ptr<ReferenceEnv>> Create(int busy_keys, bool busy) {
    auto env = std::unique_ptr<ReferenceEnv>(new ReferenceEnv());
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init(&attr) != 0 ||
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) != 0 ||
        pthread_mutex_init(&env->mu_, &attr) != 0) {
      return absl::InternalError("cannot create a process-shared mutex");
    }
    pthread_mutexattr_destroy(&attr);
    env->map_.reserve(kCapacity);
    for (int i = 0; i < busy_keys; ++i) {
      RefKey key;
      std::memset(&key, 0, sizeof(key));
      const std::string host = HostName(i);
      std::memcpy(key.host, host.data(), host.size());
      key.port = kPort;
      key.database = kDatabase;
      env->keys_.push_back(key);
      if (busy && !env->TryAcquire(key, kLimit)) {
        return absl::InternalError("setup acquire refused");
      }
    }
    return env;
  }
  ~ReferenceEnv() { pthread_mutex_destroy(&mu_); }

  // Lock, find-or-insert, check count < limit, increment, unlock.
  bool TryAcquire(const RefKey& key, uint32_t limit) {
    pthread_mutex_lock(&mu_);
    auto [it, inserted] = map_.try_emplace(key, 0u);
    bool ok = it->second < limit;
    if (ok) {
      ++it->second;
    } else if (it->second == 0) {
      map_.erase(it);
    }
    pthread_mutex_unlock(&mu_);
    return ok;
  }

  // Lock, find, decrement, erase at zero, unlock.
  void Release(const RefKey& key) {
    pthread_mutex_lock(&mu_);
    auto it = map_.find(key);
    if (it != map_.end() && --it->second == 0) map_.erase(it);
    pthread_mutex_unlock(&mu_);
  }

  const RefKey& key(size_t i) const { return keys_[i]; }
  uint32_t Count(size_t i) {
    pthread_mutex_lock(&mu_);
    auto it = map_.find(keys_[i]);
    uint32_t count = it == map_.end() ? 0 : it->second;
    pthread_mutex_unlock(&mu_);
    return count;
  }

 private:
  ReferenceEnv() = default;

  alignas(64) pthread_mutex_t mu_;
  absl::flat_hash_map<RefKey, uint32_t, RefKeyHash, RefKeyEq> map_;
  std::vector<RefKey> keys_;
};

struct ReferenceMutexHash {
  static constexpr const char* kName = "ReferenceMutexHash";
  using Env = ReferenceEnv;

  class Worker {
   public:
    explicit Worker(Env& env) : env_(env) {}
    const std::string& error() const { return error_; }

    bool AcquireRelease(size_t i) {
      const RefKey& key = env_.key(i);
      if (ABSL_PREDICT_FALSE(!env_.TryAcquire(key, kLimit))) {
        error_ = "reference acquire refused";
        return false;
      }
      env_.Release(key);
      return true;
    }

   private:
    Env& env_;
    std::string error_;
  };
};

// ---------------------------------------------------------------------------
// Floor: a bare atomic counter per key, no lookup.

struct alignas(64) FloorCounter {
  std::atomic<uint32_t> count{0};
};

class FloorEnv {
 public:
  static absl::StatusOr<std::unique_ptr<FloorEnv>> Create(int busy_keys, bool busy) {
    auto env = std::unique_ptr<FloorEnv>(new FloorEnv());
    env->counters_ = std::make_unique<FloorCounter[]>(busy_keys);
    for (int i = 0; i < (busy ? busy_keys : 0); ++i) {
      if (!TryAcquire(env->counters_[i], kLimit)) {
        return absl::InternalError("setup acquire refused");
      }
    }
    return env;
  }

  static bool TryAcquire(FloorCounter& counter, uint32_t limit) {
    uint32_t current = counter.count.load(std::memory_order_relaxed);
    while (current < limit) {
      if (counter.count.compare_exchange_weak(current, current + 1, std::memory_order_acquire,
                                              std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }
  static void Release(FloorCounter& counter) {
    counter.count.fetch_sub(1, std::memory_order_release);
  }

  FloorCounter& counter(size_t i) { return counters_[i]; }
  uint32_t Count(size_t i) const { return counters_[i].count.load(std::memory_order_relaxed); }

 private:
  FloorEnv() = default;
  std::unique_ptr<FloorCounter[]> counters_;
};
static_assert(sizeof(FloorCounter) == 64);

struct AtomicFloor {
  static constexpr const char* kName = "AtomicFloor";
  using Env = FloorEnv;

  class Worker {
   public:
    explicit Worker(Env& env) : env_(env) {}
    const std::string& error() const { return error_; }

    bool AcquireRelease(size_t i) {
      FloorCounter& counter = env_.counter(i);
      if (ABSL_PREDICT_FALSE(!Env::TryAcquire(counter, kLimit))) {
        error_ = "floor acquire refused";
        return false;
      }
      Env::Release(counter);
      return true;
    }

   private:
    Env& env_;
    std::string error_;
  };
};

// The floor of two levels: a database counter and a node counter per key.
class FloorTwoLevelEnv {
 public:
  static absl::StatusOr<std::unique_ptr<FloorTwoLevelEnv>> Create(int busy_keys, bool busy) {
    auto env = std::unique_ptr<FloorTwoLevelEnv>(new FloorTwoLevelEnv());
    absl::StatusOr<std::unique_ptr<FloorEnv>> db = FloorEnv::Create(busy_keys, busy);
    absl::StatusOr<std::unique_ptr<FloorEnv>> node = FloorEnv::Create(busy_keys, busy);
    if (!db.ok()) return db.status();
    if (!node.ok()) return node.status();
    env->db_ = *std::move(db);
    env->node_ = *std::move(node);
    return env;
  }
  FloorCounter& db(size_t i) { return db_->counter(i); }
  FloorCounter& node(size_t i) { return node_->counter(i); }
  uint32_t Count(size_t i) const { return node_->Count(i); }

 private:
  FloorTwoLevelEnv() = default;
  std::unique_ptr<FloorEnv> db_, node_;
};

struct AtomicFloorTwoLevel {
  static constexpr const char* kName = "AtomicFloorTwoLevel";
  using Env = FloorTwoLevelEnv;

  class Worker {
   public:
    explicit Worker(Env& env) : env_(env) {}
    const std::string& error() const { return error_; }

    bool AcquireRelease(size_t i) {
      FloorCounter& db = env_.db(i);
      FloorCounter& node = env_.node(i);
      if (ABSL_PREDICT_FALSE(!FloorEnv::TryAcquire(db, kLimit) ||
                             !FloorEnv::TryAcquire(node, kLimit))) {
        error_ = "floor acquire refused";
        return false;
      }
      FloorEnv::Release(node);
      FloorEnv::Release(db);
      return true;
    }

   private:
    Env& env_;
    std::string error_;
  };
};

// ---------------------------------------------------------------------------
// The cases, written once for all three implementations.

// Single thread; round-robin over the keys, or always key 0; the keys busy,
// or idle (falling to zero at every release).
template <class Impl, bool kRoundRobin, bool kBusy = true>
void BM_Optional(benchmark::State& state) {
  const int busy_keys = static_cast<int>(state.range(0));
  absl::StatusOr<typename Impl::Env*> env = GetEnv<typename Impl::Env>(busy_keys, kBusy);
  if (!env.ok()) {
    state.SkipWithError(ToStd(env.status()).c_str());
    return;
  }
  typename Impl::Worker worker(**env);
  if (!worker.error().empty()) {
    state.SkipWithError(worker.error().c_str());
    return;
  }
  const size_t n = static_cast<size_t>(busy_keys);
  size_t i = 0;
  for (auto _ : state) {
    bool ok = worker.AcquireRelease(i);
    benchmark::DoNotOptimize(ok);
    if (ABSL_PREDICT_FALSE(!ok)) {
      state.SkipWithError(worker.error().c_str());
      break;
    }
    // Same sequence as i % n, without a division on the measured path.
    if (kRoundRobin && ++i == n) i = 0;
  }
  // Conservation: only the busy slot is left on every key touched.
  for (size_t k = 0; k < (kRoundRobin ? n : 1); ++k) {
    if ((*env)->Count(k) != (kBusy ? 1u : 0u)) {
      state.SkipWithError("a key does not hold exactly its busy slot after the run");
      return;
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(!kBusy        ? "round-robin over idle keys, each falling to zero"
                 : kRoundRobin ? "round-robin over busy keys"
                               : "fixed key 0");
}

// Two threads, each with its own participant; distinct keys (thread t uses key
// t) or one key (both use key 0).
template <class Impl, bool kDistinct, bool kBusy = true>
void BM_TwoThreads(benchmark::State& state) {
  const int busy_keys = kDistinct ? 2 : 1;
  absl::StatusOr<typename Impl::Env*> env = GetEnv<typename Impl::Env>(busy_keys, kBusy);
  if (!env.ok()) {
    state.SkipWithError(ToStd(env.status()).c_str());
    return;
  }
  typename Impl::Worker worker(**env);
  if (!worker.error().empty()) {
    state.SkipWithError(worker.error().c_str());
    return;
  }
  const size_t key = kDistinct ? static_cast<size_t>(state.thread_index()) : 0;
  for (auto _ : state) {
    bool ok = worker.AcquireRelease(key);
    benchmark::DoNotOptimize(ok);
    if (ABSL_PREDICT_FALSE(!ok)) {
      state.SkipWithError(worker.error().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(std::string(kDistinct ? "thread t uses key t" : "both threads use key 0") +
                 (kBusy ? "" : ", falling to zero"));
}

// Two threads, one key with a limit of one slot: each iteration a thread
// waits for the slot the other thread holds and gives it back. The figure is
// the time of one hand-over: release, futex wake, the waiter running and
// taking the slot (DESIGN.md: "taken by a waiter promptly").
void BM_Connthrottle_WaitHandoff(benchmark::State& state) {
  absl::StatusOr<ConnthrottleEnv<false>*> env = GetEnv<ConnthrottleEnv<false>>(1);
  if (!env.ok()) {
    state.SkipWithError(ToStd(env.status()).c_str());
    return;
  }
  absl::StatusOr<std::unique_ptr<Owner>> owner = (*env)->table().RegisterOwner();
  if (!owner.ok()) {
    state.SkipWithError(ToStd(owner.status()).c_str());
    return;
  }
  // The environment's busy slot counts too: a limit of 2 leaves one to share.
  const Limit limit = Limit::AtMost(2);
  AcquireOptions options;
  options.poll_interval = absl::Hours(1);  // only a real wake-up ends a wait
  for (auto _ : state) {
    absl::StatusOr<Slot> slot =
        (*owner)->AcquireWaiting((*env)->key(0), limit, absl::Now() + absl::Seconds(10), options);
    if (ABSL_PREDICT_FALSE(!slot.ok())) {
      state.SkipWithError(ToStd(slot.status()).c_str());
      break;
    }
    benchmark::DoNotOptimize(*slot);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("release -> waiting acquire of the other thread");
}

template <class Impl>
std::string Name(const char* which) {
  return std::string("BM_") + Impl::kName + "_" + which;
}

template <class Impl>
void RegisterOptional(const char* which, void (*fn)(benchmark::State&)) {
  benchmark::RegisterBenchmark(Name<Impl>(which).c_str(), fn)
      ->ArgName("busy_keys")
      ->Arg(1)
      ->Arg(16)
      ->Arg(10000)
      ->UseRealTime();
}

template <class Impl>
void RegisterFalling(const char* which, void (*fn)(benchmark::State&)) {
  benchmark::RegisterBenchmark(Name<Impl>(which).c_str(), fn)
      ->ArgName("keys")
      ->Arg(1)
      ->Arg(16)
      ->UseRealTime();
}

template <class Impl>
void RegisterTwoThreads(const char* which, void (*fn)(benchmark::State&)) {
  benchmark::RegisterBenchmark(Name<Impl>(which).c_str(), fn)->Threads(2)->UseRealTime();
}

// Registered case by case, so the three implementations of a case run next to
// each other (and see the same machine conditions).
void RegisterAll() {
  RegisterOptional<Connthrottle>("Optional", BM_Optional<Connthrottle, true>);
  RegisterOptional<ConnthrottleReclaiming>("Optional", BM_Optional<ConnthrottleReclaiming, true>);
  RegisterOptional<ReferenceMutexHash>("Optional", BM_Optional<ReferenceMutexHash, true>);
  RegisterOptional<AtomicFloor>("Optional", BM_Optional<AtomicFloor, true>);

  RegisterOptional<Connthrottle>("OptionalFixedKey", BM_Optional<Connthrottle, false>);
  RegisterOptional<ConnthrottleReclaiming>("OptionalFixedKey",
                                           BM_Optional<ConnthrottleReclaiming, false>);
  RegisterOptional<ReferenceMutexHash>("OptionalFixedKey", BM_Optional<ReferenceMutexHash, false>);
  RegisterOptional<AtomicFloor>("OptionalFixedKey", BM_Optional<AtomicFloor, false>);

  RegisterTwoThreads<Connthrottle>("TwoThreadsDistinctKeys", BM_TwoThreads<Connthrottle, true>);
  RegisterTwoThreads<ConnthrottleReclaiming>("TwoThreadsDistinctKeys",
                                             BM_TwoThreads<ConnthrottleReclaiming, true>);
  RegisterTwoThreads<ReferenceMutexHash>("TwoThreadsDistinctKeys",
                                         BM_TwoThreads<ReferenceMutexHash, true>);
  RegisterTwoThreads<AtomicFloor>("TwoThreadsDistinctKeys", BM_TwoThreads<AtomicFloor, true>);

  RegisterTwoThreads<Connthrottle>("TwoThreadsOneKey", BM_TwoThreads<Connthrottle, false>);
  RegisterTwoThreads<ReferenceMutexHash>("TwoThreadsOneKey",
                                         BM_TwoThreads<ReferenceMutexHash, false>);
  RegisterTwoThreads<AtomicFloor>("TwoThreadsOneKey", BM_TwoThreads<AtomicFloor, false>);

  // Keys that go idle (issue 14).
  RegisterFalling<Connthrottle>("FallingToZero", BM_Optional<Connthrottle, true, false>);
  RegisterFalling<ConnthrottleReclaiming>("FallingToZero",
                                          BM_Optional<ConnthrottleReclaiming, true, false>);
  RegisterFalling<ReferenceMutexHash>("FallingToZero",
                                      BM_Optional<ReferenceMutexHash, true, false>);
  RegisterFalling<AtomicFloor>("FallingToZero", BM_Optional<AtomicFloor, true, false>);

  RegisterTwoThreads<Connthrottle>("TwoThreadsFallingToZeroOwnKeys",
                                   BM_TwoThreads<Connthrottle, true, false>);
  RegisterTwoThreads<ConnthrottleReclaiming>("TwoThreadsFallingToZeroOwnKeys",
                                             BM_TwoThreads<ConnthrottleReclaiming, true, false>);
  RegisterTwoThreads<ReferenceMutexHash>("TwoThreadsFallingToZeroOwnKeys",
                                         BM_TwoThreads<ReferenceMutexHash, true, false>);
  RegisterTwoThreads<AtomicFloor>("TwoThreadsFallingToZeroOwnKeys",
                                  BM_TwoThreads<AtomicFloor, true, false>);

  RegisterTwoThreads<Connthrottle>("TwoThreadsFallingToZeroOneKey",
                                   BM_TwoThreads<Connthrottle, false, false>);
  RegisterTwoThreads<ConnthrottleReclaiming>("TwoThreadsFallingToZeroOneKey",
                                             BM_TwoThreads<ConnthrottleReclaiming, false, false>);
  RegisterTwoThreads<ReferenceMutexHash>("TwoThreadsFallingToZeroOneKey",
                                         BM_TwoThreads<ReferenceMutexHash, false, false>);
  RegisterTwoThreads<AtomicFloor>("TwoThreadsFallingToZeroOneKey",
                                  BM_TwoThreads<AtomicFloor, false, false>);

  // The per-database bound on (two counters per acquire), against its floor.
  RegisterOptional<ConnthrottlePerDatabase>("Optional", BM_Optional<ConnthrottlePerDatabase, true>);
  RegisterOptional<AtomicFloorTwoLevel>("Optional", BM_Optional<AtomicFloorTwoLevel, true>);
  RegisterFalling<ConnthrottlePerDatabase>("FallingToZero",
                                           BM_Optional<ConnthrottlePerDatabase, true, false>);
  RegisterFalling<AtomicFloorTwoLevel>("FallingToZero",
                                       BM_Optional<AtomicFloorTwoLevel, true, false>);
  RegisterTwoThreads<ConnthrottlePerDatabase>("TwoThreadsDistinctKeys",
                                              BM_TwoThreads<ConnthrottlePerDatabase, true>);
  RegisterTwoThreads<AtomicFloorTwoLevel>("TwoThreadsDistinctKeys",
                                          BM_TwoThreads<AtomicFloorTwoLevel, true>);

  benchmark::RegisterBenchmark("BM_Connthrottle_WaitHandoff", BM_Connthrottle_WaitHandoff)
      ->Threads(2)
      ->UseRealTime();
}

}  // namespace
}  // namespace connthrottle

int main(int argc, char** argv) {
  connthrottle::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
