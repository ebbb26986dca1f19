// communicator.cc — the shared pool's PostgreSQL side: the session slots in
// shared memory, the communicator background worker that serves them, and
// the backend's half of a slot (the ChannelOps of pool_channel.h).
//
// Shared memory ("connthrottle communicator"): a header and one slot per
// backend (MaxBackends, indexed by MyBackendId - 1), each with a message
// area of connthrottle.pool_message_bytes. A slot's `state` says who may
// touch its area:
//
//   kFree       the backend's: it writes a request, then (write barrier)
//   kSubmitted  the communicator's: it takes the request into the pool
//   kRunning    the communicator's: the tasks run; when they are settled it
//               writes the response, then (write barrier)
//   kDone       the backend's again: it reads the response (read barrier)
//   kMore       the communicator's: the backend took a part of a response
//               larger than the area and asks for the next (NextPart)
//
// A backend withdraws a request (cancel, statement_timeout, terminate, exit)
// by writing its id to `cancel` and waking the communicator, without
// waiting: the communicator cancels the tasks and frees the slot, and the
// backend's next request waits for that (claim). A backend that submits or
// withdraws or asks for a response's next part sets its bit in the header's
// `pending` bitmap (a full barrier), so that the communicator looks at
// those slots only, not at all MaxBackends of them, and then writes to the
// header's eventfd (`wake_fd`); the communicator answers by setting the
// backend's latch.
//
// The communicator's thread model: the pool runs on a thread of its own
// (pool_service.cc, plain C++, all signals blocked). That thread polls the
// eventfd beside its connections and serves the slots itself (ServePending:
// drain the eventfd, then take the bitmap, so that a bit set after the take
// comes with a write after the drain: model/wakeup.pml), and answers a
// request on that thread as it settles (AnswerSlot), under the service's
// lock. A request crosses one wake-up each way: backend -> pool's thread ->
// backend. The main thread (this file's loop) keeps what only it may do:
// configuration reloads, the figures, SIGTERM and postmaster death, and a
// sweep of every slot every 100 ms in case a wake-up went missing; it
// serves the slots itself only while the pool's thread cannot (the pool
// could not start, or there is no eventfd: EXEC_BACKEND builds, or
// eventfd() failed in the postmaster; backends then set its latch). Both
// servers take `serving`, so a slot is served by one thread at a time.
//
// What the pool's thread runs of this file is the exception to "no
// PostgreSQL API off the main thread", and why it is safe: the slots'
// pg_atomic_* operations and barriers, which compile to inline atomic
// instructions (the emulation with spinlocks is refused below), and
// SetLatch of a backend's latch, which touches only that latch in shared
// memory and sends a signal (it is async-signal-safe by design). No
// allocation in PostgreSQL's memory contexts, no ereport, no lock of the
// server's.
//
// Failure: on SIGTERM (pg_terminate_backend, shutdown) the communicator
// answers every request it holds with 57P01, closes its connections (giving
// back their slots of the counter table) and exits with code 1, so that the
// postmaster starts it again after a second. Each start bumps `epoch`: a
// backend whose request was taken by an earlier communicator gets 08006.
// A communicator that crashes makes the postmaster restart the server, which
// re-initialises shared memory: nothing stays counted.

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"
// clang-format on

PGDLLEXPORT void connthrottle_communicator_main(Datum arg);
}

#include "pg/communicator.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>

#include "pg/bridge/backend_state.h"
#include "pg/bridge/pool_service.h"
#include "pg/guc.h"

// The pool's thread runs ServePending (see above): only real atomics.
#if defined(PG_HAVE_ATOMIC_U32_SIMULATION) || defined(PG_HAVE_ATOMIC_U64_SIMULATION) || \
    defined(PG_HAVE_ATOMIC_FLAG_SIMULATION)
#error "connthrottle's communicator needs native atomics (its pool's thread serves the slots)"
#endif

namespace {

using connthrottle::pg::ChannelState;
using connthrottle::pg::PoolStat;

enum SlotState : uint32 { kFree = 0, kSubmitted = 1, kRunning = 2, kDone = 3, kMore = 4 };

// Whether the communicator holds the slot's request.
bool Held(uint32 state) { return state == kSubmitted || state == kRunning || state == kMore; }

struct Slot {
  pg_atomic_uint32 state;
  pg_atomic_uint32 cancel;  // the id of a request the backend withdrew
  uint32 request_id;        // written by the backend before kSubmitted
  uint32 epoch;             // the communicator's epoch when submitted
  pg_atomic_uint64 latch;   // the Latch* of the backend using the slot
  // Set by a communicator that stopped while the slot's session had a COPY
  // open in its pool (a ChannelState: kTerminated or kRestarted); taken by
  // the session's next COPY step (OpsLostCopy).
  pg_atomic_uint32 copy_lost;
  uint64 size;   // bytes of the request, then of the response's part
  uint64 total;  // bytes of the whole response
};

struct Header {
  pg_atomic_uint32 epoch;        // bumped by every communicator start
  pg_atomic_uint32 pid;          // the running communicator's pid, 0 when none
  pg_atomic_uint32 terminating;  // it was told to stop
  Latch* latch;                  // the running communicator's latch
  int wake_fd;                   // the eventfd backends write to; -1: set the latch instead
  uint32 slots;
  uint64 area_bytes;
  pg_atomic_uint64 stats[connthrottle::pg::kPoolStatCount];  // pool_stats.h, in its order
};

// The pending bitmap: one bit per slot, after the header.
uint32 PendingWords(uint32 slots) { return (slots + 63) / 64; }

Header* header = nullptr;
int message_bytes = 64 * 1024;  // connthrottle.pool_message_bytes

size_t SlotStride() {
  return MAXALIGN(sizeof(Slot)) + MAXALIGN(static_cast<size_t>(message_bytes));
}

size_t PendingBytes(uint32 slots) { return MAXALIGN(PendingWords(slots) * sizeof(uint64)); }

pg_atomic_uint64* Pending() {
  return reinterpret_cast<pg_atomic_uint64*>(reinterpret_cast<char*>(header) +
                                             MAXALIGN(sizeof(Header)));
}

Slot* SlotAt(uint32 i) {
  char* base =
      reinterpret_cast<char*>(header) + MAXALIGN(sizeof(Header)) + PendingBytes(header->slots);
  return reinterpret_cast<Slot*>(base + static_cast<size_t>(i) * SlotStride());
}

uint32 SlotIndex(const Slot* slot) {
  const char* base =
      reinterpret_cast<char*>(header) + MAXALIGN(sizeof(Header)) + PendingBytes(header->slots);
  return static_cast<uint32>((reinterpret_cast<const char*>(slot) - base) / SlotStride());
}

// A full barrier (fetch_or): what the backend wrote before is visible to the
// communicator that takes the bit.
void MarkPending(const Slot* slot) {
  const uint32 i = SlotIndex(slot);
  pg_atomic_fetch_or_u64(&Pending()[i / 64], uint64{1} << (i % 64));
}

char* AreaOf(Slot* slot) { return reinterpret_cast<char*>(slot) + MAXALIGN(sizeof(Slot)); }

// In the postmaster: the eventfd of the shared memory it made last (a
// restart after a crash makes another).
int postmaster_wake_fd = -1;

// ---- the communicator ----

volatile sig_atomic_t got_sigterm = false;
uint64 reloads = 0;  // configuration reloads applied since the communicator started
// Requests taken by the pool's thread and by the main thread (under
// `serving`; read by PublishStats).
std::atomic<uint64> requests_taken{0};
std::atomic<uint64> requests_swept{0};

void OnSigterm(SIGNAL_ARGS) {
  int save_errno = errno;
  got_sigterm = true;
  SetLatch(MyLatch);
  errno = save_errno;
}

connthrottle::pg::PoolServiceSettings ServiceSettings() {
  connthrottle::pg::PoolServiceSettings s;
  s.settings = connthrottle::pg::CurrentSettings();
  s.active_client_backends = connthrottle::pg::ActiveClientBackends();
  const connthrottle::pg::ExecutorSettings e = connthrottle::pg::CurrentExecutorSettings();
  s.max_pool_size = e.max_pool_size;
  s.node_connection_timeout_ms = e.node_connection_timeout_ms;
  s.slow_start_interval_ms = e.slow_start_interval_ms;
  s.pool = connthrottle::pg::CurrentPoolSettings();
  return s;
}

void WakeBackend(Slot* slot) {
  if (Latch* latch = reinterpret_cast<Latch*>(pg_atomic_read_u64(&slot->latch))) SetLatch(latch);
}

void Answer(Slot* slot, size_t size, size_t total) {
  slot->size = size;
  slot->total = total;
  pg_write_barrier();
  pg_atomic_write_u32(&slot->state, kDone);
  WakeBackend(slot);
}

// The pool service's AnswerFn: on the pool's thread, or the main thread.
void AnswerSlot(int i, size_t size, size_t total) {
  Answer(SlotAt(static_cast<uint32>(i)), size, total);
}

// Frees a withdrawn request's slot that the pool never had (kSubmitted).
void ReleaseSlot(int i) {
  Slot* slot = SlotAt(static_cast<uint32>(i));
  pg_atomic_write_u32(&slot->state, kFree);
  WakeBackend(slot);
}

// Frees a withdrawn request's slot the pool had (under the pool service's
// lock): only if it is still running or between parts. The pool's thread
// may have answered it meanwhile, and the backend already claimed the slot
// again and submitted its next request, which must stay.
void ReleaseWithdrawn(int i) {
  Slot* slot = SlotAt(static_cast<uint32>(i));
  const uint32 held[] = {kRunning, kMore};
  for (uint32 from : held) {
    uint32 expected = from;
    if (pg_atomic_compare_exchange_u32(&slot->state, &expected, kFree)) {
      WakeBackend(slot);
      return;
    }
  }
}

// Answers a request this communicator will not run with 08006.
void AnswerLost(Slot* slot, const char* why) {
  const size_t n = connthrottle::pg::WriteErrorResponse(
      AreaOf(slot), header->area_bytes, 14 /* absl::StatusCode::kUnavailable */, "08006", why);
  Answer(slot, n, n);
}

// Slot i's new or withdrawn request, if it has one; `taken` counts the
// requests this server takes.
void ServeSlot(uint32 i, std::atomic<uint64>& taken) {
  Slot* slot = SlotAt(i);
  const uint32 state = pg_atomic_read_u32(&slot->state);
  if (!Held(state)) return;
  pg_read_barrier();
  const bool withdrawn = pg_atomic_read_u32(&slot->cancel) == slot->request_id;
  if (withdrawn) {
    if (state != kSubmitted) {
      connthrottle::pg::CancelInPool(static_cast<int>(i), ReleaseWithdrawn);
    } else {
      // Not taken yet; a COPY the session had open ends with it.
      connthrottle::pg::AbandonCopy(static_cast<int>(i));
      ReleaseSlot(static_cast<int>(i));
    }
    return;
  }
  if (state == kRunning) return;
  if (state == kMore) {
    const uint32 id = slot->request_id;  // the backend's until the part is in
    // None after a restart: the parts were an earlier communicator's.
    if (!connthrottle::pg::NextPart(static_cast<int>(i))) {
      AnswerLost(slot, "connthrottle: the communicator lost the rest of this response");
      return;
    }
    // A withdrawal made while this part was sent found the slot kMore, not a
    // part to hand back, and left it: its rest is dropped here, or it would
    // stay held (pool_response_memory) until the slot's next request. A
    // withdrawal after this look finds the part (kDone) and hands the slot
    // back as kMore (Withdraw). Each side stores, then fences, then loads
    // what the other stored: one of them sees the other.
    pg_memory_barrier();
    if (pg_atomic_read_u32(&slot->cancel) == id)
      connthrottle::pg::DropResponse(static_cast<int>(i));
    return;
  }
  // Submitted to an earlier communicator (the backend has been told so, or
  // will be): not run.
  if (slot->epoch != pg_atomic_read_u32(&header->epoch)) {
    AnswerLost(slot, "connthrottle: the communicator restarted before it ran this request");
    return;
  }
  if (slot->size > header->area_bytes) {
    AnswerLost(slot, "connthrottle: a malformed request");
    return;
  }
  // Running before the pool sees it: the pool's thread may answer it at once.
  pg_atomic_write_u32(&slot->state, kRunning);
  taken.fetch_add(1, std::memory_order_relaxed);
  connthrottle::pg::SubmitToPool(static_cast<int>(i), AreaOf(slot), slot->size, header->area_bytes);
}

// Serialises the slots' servers (the pool's thread, the main thread's sweep);
// `serving_stopped` is set as the communicator exits, from when on only the
// exit answers.
std::mutex serving;
bool serving_stopped = false;

// The slots whose bit is set in the pending bitmap. Under `serving`.
void ServePending(std::atomic<uint64>& taken) {
  const uint32 words = PendingWords(header->slots);
  for (uint32 w = 0; w < words; ++w) {
    uint64 bits = pg_atomic_exchange_u64(&Pending()[w], 0);
    while (bits != 0) {
      const int b = __builtin_ctzll(bits);
      bits &= bits - 1;
      const uint32 i = w * 64 + static_cast<uint32>(b);
      if (i < header->slots) ServeSlot(i, taken);
    }
  }
}

// ServePending under `serving`, unless the communicator is exiting.
void ServePendingLocked(std::atomic<uint64>& taken) {
  std::lock_guard<std::mutex> lock(serving);
  if (!serving_stopped) ServePending(taken);
}

// The pool's thread's serve: the pool drained the eventfd before it (the
// order model/wakeup.pml checks).
void ServeFromPool() { ServePendingLocked(requests_taken); }

// The main thread's, while the pool's thread does not serve: drained, then
// served, in the same order.
void DrainAndServe() {
  if (header->wake_fd >= 0) {
    uint64 count;
    [[maybe_unused]] ssize_t n = read(header->wake_fd, &count, sizeof(count));
  }
  ServePendingLocked(requests_swept);
}

// Every slot, in case a bit or a progress report went missing (about every
// 100 ms).
void ServeAll() {
  std::lock_guard<std::mutex> lock(serving);
  if (serving_stopped) return;
  for (uint32 i = 0; i < header->slots; ++i) {
    ServeSlot(i, requests_swept);
    if (pg_atomic_read_u32(&SlotAt(i)->state) == kRunning) {
      connthrottle::pg::AnswerIfDone(static_cast<int>(i));
    }
  }
}

void PublishStats() {
  connthrottle::pg::PoolStatValues figures = connthrottle::pg::PoolStats();
  figures[PoolStat::reloads] = static_cast<int64>(reloads);
  figures[PoolStat::requests_taken] = static_cast<int64>(requests_taken.load());
  figures[PoolStat::requests_swept] = static_cast<int64>(requests_swept.load());
  for (int k = 0; k < connthrottle::pg::kPoolStatCount; ++k) {
    pg_atomic_write_u64(&header->stats[k], static_cast<uint64>(figures.values[k]));
  }
}

// Answers every request still held (57P01 when told to stop, 08006
// otherwise), then closes the pool and gives back everything this process
// holds in the counter table.
void CommunicatorExit(int, Datum) {
  if (header == nullptr) return;
  const bool terminated = got_sigterm;
  // Sessions with a COPY open between two of its steps: their next step
  // hears that it was lost, and how; marked before this communicator is
  // seen gone, so that no step finds it gone and the mark not yet there.
  static uint32 lost_as;
  lost_as = static_cast<uint32>(terminated ? ChannelState::kTerminated : ChannelState::kRestarted);
  connthrottle::pg::ForEachOpenCopy(
      [](int i) { pg_atomic_write_u32(&SlotAt(static_cast<uint32>(i))->copy_lost, lost_as); });
  pg_atomic_write_u32(&header->pid, 0);
  // From here on only this thread answers.
  {
    std::lock_guard<std::mutex> lock(serving);
    serving_stopped = true;
  }
  connthrottle::pg::DetachRequests();
  // The pool stops before any held slot is answered: its thread may be
  // reading a COPY's chunk from a slot's area, which the answer overwrites
  // and hands back to the session.
  // The leases go back first (the lease service reads the pool's queues);
  // the connections still open count at the workers until they close.
  connthrottle::pg::StopLeaseService();
  connthrottle::pg::StopPoolService();
  for (uint32 i = 0; i < header->slots; ++i) {
    Slot* slot = SlotAt(i);
    if (!Held(pg_atomic_read_u32(&slot->state))) continue;
    const size_t n = connthrottle::pg::WriteErrorResponse(
        AreaOf(slot), header->area_bytes, 14 /* absl::StatusCode::kUnavailable */,
        terminated ? "57P01" : "08006",
        terminated ? "connthrottle: the communicator was terminated while it ran this "
                     "execution's tasks"
                   : "connthrottle: the communicator stopped while it ran this execution's tasks");
    Answer(slot, n, n);
  }
  connthrottle::pg::BackendExit();
  // Nothing open or queued now.
  pg_atomic_write_u64(&header->stats[static_cast<int>(PoolStat::connections)], 0);
  pg_atomic_write_u64(&header->stats[static_cast<int>(PoolStat::tasks_queued)], 0);
}

// ---- a backend's slot ----

constexpr long kTickMs = 100;
bool backend_exit_registered = false;

Slot* MySlot() {
  if (header == nullptr || MyBackendId == InvalidBackendId ||
      static_cast<uint32>(MyBackendId) > header->slots) {
    return nullptr;
  }
  return SlotAt(static_cast<uint32>(MyBackendId - 1));
}

// Whether a communicator runs; header->latch is its latch once this is true.
bool CommunicatorRunning() {
  const bool running = pg_atomic_read_u32(&header->pid) != 0;
  pg_read_barrier();
  return running;
}

// Tells the communicator that this backend's slot has news (its bit is set
// already): its pool's thread polls the eventfd.
void WakeCommunicator() {
  if (header->wake_fd >= 0) {
    const uint64 one = 1;
    while (write(header->wake_fd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
  } else if (CommunicatorRunning()) {
    SetLatch(header->latch);
  }
}

// An error WaitLatch raised (it raises only when epoll fails), kept until
// the C++ frames above have returned (RethrowChannelError).
ErrorData* channel_error = nullptr;

// Waits up to a tick on this backend's latch. False on postmaster death, or
// when the wait itself failed: the error is kept in channel_error.
bool WaitTick() {
  MemoryContext context = CurrentMemoryContext;
  volatile int rc = 0;
  volatile bool failed = false;
  PG_TRY();
  {
    rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_POSTMASTER_DEATH, kTickMs,
                   PG_WAIT_EXTENSION);
    ResetLatch(MyLatch);
  }
  PG_CATCH();
  {
    MemoryContextSwitchTo(context);
    if (channel_error == nullptr) channel_error = CopyErrorData();
    FlushErrorState();
    failed = true;
  }
  PG_END_TRY();
  return !failed && (rc & WL_POSTMASTER_DEATH) == 0;
}

// A part of a response in the area (kDone, fewer bytes than the whole): the
// communicator may still hold the rest for this backend.
bool HoldsAPart(Slot* slot) {
  if (pg_atomic_read_u32(&slot->state) != kDone) return false;
  pg_read_barrier();
  return slot->size != slot->total;
}

void Withdraw() {
  Slot* slot = MySlot();
  if (slot == nullptr) return;
  if (!Held(pg_atomic_read_u32(&slot->state)) && !HoldsAPart(slot)) return;
  pg_atomic_write_u32(&slot->cancel, slot->request_id);
  pg_memory_barrier();
  // Between parts the slot is the backend's: handing it back as kMore lets
  // the communicator see the withdrawal and drop the rest. Looked at after
  // the cancel word is visible, since the communicator may have sent a part
  // (kMore -> kDone) meanwhile.
  if (HoldsAPart(slot)) pg_atomic_write_u32(&slot->state, kMore);
  MarkPending(slot);
  WakeCommunicator();
}

void BackendExitWithdraw(int, Datum) { Withdraw(); }

char* OpsArea(size_t* capacity) {
  *capacity = header->area_bytes;
  return AreaOf(MySlot());
}

ChannelState OpsClaim() {
  Slot* slot = MySlot();
  // Wake this backend, not the slot's previous one, when the slot frees.
  pg_atomic_write_u64(&slot->latch, reinterpret_cast<uint64>(MyLatch));
  pg_memory_barrier();  // before the state is read: a release after it wakes us
  for (int look = 0; look < 2; ++look) {
    if (!CommunicatorRunning()) {
      if (look == 0 && WaitTick()) continue;
      return ChannelState::kNotRunning;
    }
    const uint32 state = pg_atomic_read_u32(&slot->state);
    if (state == kFree || state == kDone) {
      pg_atomic_write_u32(&slot->state, kFree);
      return ChannelState::kReady;
    }
    // A withdrawn request the communicator has not dropped yet.
    if (look == 0) WaitTick();
  }
  return ChannelState::kPending;
}

void OpsSubmit(size_t size) {
  Slot* slot = MySlot();
  slot->size = size;
  // Ids count per slot, not per backend: a backend that takes over the slot
  // of one that withdrew a request must not reuse that request's id.
  slot->request_id = slot->request_id + 1;
  slot->epoch = pg_atomic_read_u32(&header->epoch);
  pg_atomic_write_u64(&slot->latch, reinterpret_cast<uint64>(MyLatch));
  pg_write_barrier();
  pg_atomic_write_u32(&slot->state, kSubmitted);
  MarkPending(slot);
  WakeCommunicator();
}

// The response (or its part) stays in the area, the slot kDone, until the
// backend asks for the next part (OpsMore) or claims the slot again.
ChannelState OpsAwait(size_t* size, size_t* total) {
  Slot* slot = MySlot();
  for (int look = 0; look < 2; ++look) {
    const uint32 state = pg_atomic_read_u32(&slot->state);
    if (state == kDone) {
      pg_read_barrier();
      *size = Min(slot->size, header->area_bytes);
      *total = Max(slot->total, *size);
      return ChannelState::kReady;
    }
    // Freed without an answer: only a communicator that started meanwhile
    // does that.
    if (state == kFree || !CommunicatorRunning() ||
        pg_atomic_read_u32(&header->epoch) != slot->epoch) {
      return pg_atomic_read_u32(&header->terminating) != 0 ? ChannelState::kTerminated
                                                           : ChannelState::kRestarted;
    }
    if (look == 0 && !WaitTick()) return ChannelState::kNotRunning;
  }
  return ChannelState::kPending;
}

ChannelState OpsLostCopy() {
  const uint32 lost = pg_atomic_exchange_u32(&MySlot()->copy_lost, 0);
  return lost == 0 ? ChannelState::kReady : static_cast<ChannelState>(lost);
}

void OpsMore() {
  Slot* slot = MySlot();
  pg_memory_barrier();  // the part is read before the communicator may overwrite it
  pg_atomic_write_u32(&slot->state, kMore);
  MarkPending(slot);
  WakeCommunicator();
}

}  // namespace

namespace connthrottle::pg {

void SetPoolMessageBytes(int bytes) { message_bytes = bytes; }

size_t CommunicatorShmemBytes() {
  return add_size(
      add_size(MAXALIGN(sizeof(Header)), PendingBytes(static_cast<uint32>(MaxBackends))),
      mul_size(static_cast<Size>(MaxBackends), SlotStride()));
}

void CommunicatorShmemInit() {
  bool found = false;
  header = static_cast<Header*>(
      ShmemInitStruct("connthrottle communicator", CommunicatorShmemBytes(), &found));
  if (found) return;
  memset(header, 0, CommunicatorShmemBytes());
  pg_atomic_init_u32(&header->epoch, 0);
  pg_atomic_init_u32(&header->pid, 0);
  pg_atomic_init_u32(&header->terminating, 0);
  header->slots = static_cast<uint32>(MaxBackends);
  header->area_bytes = static_cast<uint64>(message_bytes);
  for (auto& s : header->stats) pg_atomic_init_u64(&s, 0);
  for (uint32 w = 0; w < PendingWords(header->slots); ++w) pg_atomic_init_u64(&Pending()[w], 0);
#ifndef EXEC_BACKEND
  // Made here, in the postmaster, so that every backend and the
  // communicator, forked from it, have it open under the same number.
  if (postmaster_wake_fd >= 0) close(postmaster_wake_fd);
  postmaster_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  header->wake_fd = postmaster_wake_fd;
#else
  header->wake_fd = -1;  // not inherited: the backends set the latch
#endif
  for (uint32 i = 0; i < header->slots; ++i) {
    pg_atomic_init_u32(&SlotAt(i)->state, kFree);
    pg_atomic_init_u32(&SlotAt(i)->cancel, 0);
    pg_atomic_init_u64(&SlotAt(i)->latch, 0);
    pg_atomic_init_u32(&SlotAt(i)->copy_lost, 0);
  }
}

void RegisterCommunicator() {
  BackgroundWorker worker;
  memset(&worker, 0, sizeof(worker));
  worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
  // A standby's sessions may run read-only tasks too.
  worker.bgw_start_time = BgWorkerStart_ConsistentState;
  worker.bgw_restart_time = 1;
  snprintf(worker.bgw_library_name, BGW_MAXLEN, "connthrottle");
  snprintf(worker.bgw_function_name, BGW_MAXLEN, "connthrottle_communicator_main");
  snprintf(worker.bgw_name, BGW_MAXLEN, "connthrottle communicator");
  snprintf(worker.bgw_type, BGW_MAXLEN, "connthrottle communicator");
  RegisterBackgroundWorker(&worker);
}

bool ChannelAvailable() { return MySlot() != nullptr; }

ChannelOps BackendChannelOps() {
  // Registered here, in the glue, not from inside the C++ transport: it may
  // raise (too many callbacks).
  if (!backend_exit_registered) {
    before_shmem_exit(BackendExitWithdraw, 0);
    backend_exit_registered = true;
  }
  return {OpsArea, OpsClaim, OpsSubmit, OpsAwait, OpsMore, Withdraw, OpsLostCopy};
}

void RethrowChannelError() {
  if (channel_error == nullptr) return;
  ErrorData* error = channel_error;
  channel_error = nullptr;
  ReThrowError(error);
}

CommunicatorStats ReadCommunicatorStats() {
  CommunicatorStats out{};
  if (header == nullptr) return out;
  out.pid = static_cast<int>(pg_atomic_read_u32(&header->pid));
  out.epoch = pg_atomic_read_u32(&header->epoch);
  for (int k = 0; k < kPoolStatCount; ++k) {
    out.figures.values[k] = static_cast<int64_t>(pg_atomic_read_u64(&header->stats[k]));
  }
  return out;
}

}  // namespace connthrottle::pg

void connthrottle_communicator_main(Datum) {
  pqsignal(SIGTERM, OnSigterm);
  pqsignal(SIGHUP, SignalHandlerForConfigReload);
  // A query cancel means nothing here (it would end the worker).
  pqsignal(SIGINT, SIG_IGN);
  BackgroundWorkerUnblockSignals();
  BackgroundWorkerInitializeConnection(nullptr, nullptr, 0);
  pgstat_report_appname("connthrottle communicator");

  // Take over the slots: requests an earlier communicator left are answered
  // with 08006 (ServeSlot answers those submitted under the old epoch
  // after this scan passed them).
  pg_atomic_fetch_add_u32(&header->epoch, 1);
  pg_atomic_write_u32(&header->terminating, 0);
  for (uint32 i = 0; i < header->slots; ++i) {
    Slot* slot = SlotAt(i);
    if (Held(pg_atomic_read_u32(&slot->state))) {
      AnswerLost(slot, "connthrottle: the communicator restarted while it held this request");
    }
  }
  header->latch = MyLatch;
  before_shmem_exit(CommunicatorExit, 0);
  connthrottle::pg::StartPoolService(ServiceSettings(), AnswerSlot,
                                     {header->wake_fd, ServeFromPool});
  connthrottle::pg::StartLeaseService(connthrottle::pg::CurrentLeaseServiceSettings());
  pg_write_barrier();
  pg_atomic_write_u32(&header->pid, static_cast<uint32>(MyProcPid));

  TimestampTz refreshed = GetCurrentTimestamp();
  while (!got_sigterm) {
    // The slots are the pool's thread's; this thread serves them only while
    // that one cannot, woken by the eventfd (or, without one, its latch).
    const bool serve_here = !connthrottle::pg::PoolServesSlots();
    const int events = WL_LATCH_SET | WL_TIMEOUT | WL_POSTMASTER_DEATH |
                       (serve_here && header->wake_fd >= 0 ? WL_SOCKET_READABLE : 0);
    const int rc = WaitLatchOrSocket(MyLatch, events, header->wake_fd, 100, PG_WAIT_EXTENSION);
    if (rc & WL_POSTMASTER_DEATH) proc_exit(1);
    ResetLatch(MyLatch);
    if (got_sigterm) break;
    // ProcSignal barriers (DROP DATABASE waits for every process to absorb
    // one) and the like; SIGTERM has its own handler.
    CHECK_FOR_INTERRUPTS();
    const TimestampTz now = GetCurrentTimestamp();
    if (ConfigReloadPending || TimestampDifferenceExceeds(refreshed, now, 100)) {
      if (ConfigReloadPending) {
        ConfigReloadPending = false;
        ProcessConfigFile(PGC_SIGHUP);
        ++reloads;
      }
      connthrottle::pg::UpdatePoolService(ServiceSettings());
      connthrottle::pg::UpdateLeaseService(connthrottle::pg::CurrentLeaseServiceSettings());
      ServeAll();
      PublishStats();
      refreshed = now;
    }
    if (serve_here) DrainAndServe();
  }
  pg_atomic_write_u32(&header->terminating, 1);
  proc_exit(1);  // CommunicatorExit answers, closes and gives back; restarted in a second
}
