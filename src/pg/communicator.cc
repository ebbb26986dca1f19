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
//
// A backend withdraws a request (cancel, statement_timeout, terminate, exit)
// by writing its id to `cancel` and waking the communicator, without
// waiting: the communicator cancels the tasks and frees the slot, and the
// backend's next request waits for that (claim). Every change of state is
// followed by setting the other side's latch.
//
// The communicator's thread model: its main thread (this file) waits in a
// WaitEventSet on its latch, postmaster death and an eventfd; the pool runs
// on a thread of its own (pool_service.cc, plain C++, all signals blocked)
// and writes the eventfd when a request progresses. A thread other than the
// main one never calls PostgreSQL.
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

#include <sys/eventfd.h>
#include <unistd.h>

PGDLLEXPORT void connthrottle_communicator_main(Datum arg);
}

#include "pg/communicator.h"
#include "pg/guc.h"
#include "pg/pool_service.h"

namespace {

using connthrottle::pg::ChannelState;

enum SlotState : uint32 { kFree = 0, kSubmitted = 1, kRunning = 2, kDone = 3 };

struct Slot {
  pg_atomic_uint32 state;
  pg_atomic_uint32 cancel;  // the id of a request the backend withdrew
  uint32 request_id;        // written by the backend before kSubmitted
  uint32 epoch;             // the communicator's epoch when submitted
  pg_atomic_uint64 latch;   // the Latch* of the backend using the slot
  uint64 size;              // bytes of the request, then of the response
};

// The statistics the communicator publishes, one counter each.
constexpr int kStatCount = 16;

struct Header {
  pg_atomic_uint32 epoch;        // bumped by every communicator start
  pg_atomic_uint32 pid;          // the running communicator's pid, 0 when none
  pg_atomic_uint32 terminating;  // it was told to stop
  Latch* latch;                  // the running communicator's latch
  uint32 slots;
  uint64 area_bytes;
  pg_atomic_uint64 stats[kStatCount];
};

Header* header = nullptr;
int message_bytes = 64 * 1024;  // connthrottle.pool_message_bytes

size_t SlotStride() {
  return MAXALIGN(sizeof(Slot)) + MAXALIGN(static_cast<size_t>(message_bytes));
}

Slot* SlotAt(uint32 i) {
  char* base = reinterpret_cast<char*>(header) + MAXALIGN(sizeof(Header));
  return reinterpret_cast<Slot*>(base + static_cast<size_t>(i) * SlotStride());
}

char* AreaOf(Slot* slot) { return reinterpret_cast<char*>(slot) + MAXALIGN(sizeof(Slot)); }

// ---- the communicator ----

volatile sig_atomic_t got_sigterm = false;
uint64 reloads = 0;  // configuration reloads applied since the communicator started
int notify_fd = -1;

void OnSigterm(SIGNAL_ARGS) {
  int save_errno = errno;
  got_sigterm = true;
  SetLatch(MyLatch);
  errno = save_errno;
}

// Called on the pool's thread: only an eventfd write.
void NotifyMain() {
  const uint64 one = 1;
  [[maybe_unused]] ssize_t n = write(notify_fd, &one, sizeof(one));
}

connthrottle::pg::PoolServiceSettings ServiceSettings() {
  connthrottle::pg::PoolServiceSettings s;
  s.settings = connthrottle::pg::CurrentSettings();
  s.active_client_backends = connthrottle::pg::ActiveClientBackends();
  const connthrottle::pg::ExecutorSettings e = connthrottle::pg::CurrentExecutorSettings();
  s.max_pool_size = e.max_pool_size;
  s.node_connection_timeout_ms = e.node_connection_timeout_ms;
  s.slow_start_interval_ms = e.slow_start_interval_ms;
  s.pool_idle_timeout_ms = connthrottle::pg::PoolIdleTimeoutMs();
  return s;
}

void WakeBackend(Slot* slot) {
  if (Latch* latch = reinterpret_cast<Latch*>(pg_atomic_read_u64(&slot->latch))) SetLatch(latch);
}

void Answer(Slot* slot, size_t size) {
  slot->size = size;
  pg_write_barrier();
  pg_atomic_write_u32(&slot->state, kDone);
  WakeBackend(slot);
}

// Answers a request this communicator will not run with 08006.
void AnswerLost(Slot* slot, const char* why) {
  Answer(slot, connthrottle::pg::WriteErrorResponse(AreaOf(slot), header->area_bytes,
                                                    14 /* absl::StatusCode::kUnavailable */,
                                                    "08006", why));
}

// One look at every slot: new requests, withdrawn ones.
void ServeSlots() {
  for (uint32 i = 0; i < header->slots; ++i) {
    Slot* slot = SlotAt(i);
    const uint32 state = pg_atomic_read_u32(&slot->state);
    if (state != kSubmitted && state != kRunning) continue;
    pg_read_barrier();
    const bool withdrawn = pg_atomic_read_u32(&slot->cancel) == slot->request_id;
    if (withdrawn) {
      if (state == kRunning) connthrottle::pg::CancelInPool(static_cast<int>(i));
      pg_atomic_write_u32(&slot->state, kFree);
      WakeBackend(slot);
      continue;
    }
    if (state != kSubmitted) continue;
    // Submitted to an earlier communicator (the backend has been told so, or
    // will be): not run.
    if (slot->epoch != pg_atomic_read_u32(&header->epoch)) {
      AnswerLost(slot, "connthrottle: the communicator restarted before it ran this request");
      continue;
    }
    if (slot->size > header->area_bytes) {
      AnswerLost(slot, "connthrottle: a malformed request");
      continue;
    }
    bool answered = false;
    size_t response = 0;
    connthrottle::pg::SubmitToPool(static_cast<int>(i), AreaOf(slot), slot->size,
                                   header->area_bytes, &answered, &response);
    if (answered) {
      Answer(slot, response);
    } else {
      pg_atomic_write_u32(&slot->state, kRunning);
    }
  }
}

// Every running request, in case a progress report went missing.
void AnswerRunning() {
  for (uint32 i = 0; i < header->slots; ++i) {
    Slot* slot = SlotAt(i);
    if (pg_atomic_read_u32(&slot->state) != kRunning) continue;
    size_t response = 0;
    if (connthrottle::pg::AnswerIfDone(static_cast<int>(i), AreaOf(slot), header->area_bytes,
                                       &response)) {
      Answer(slot, response);
    }
  }
}

void AnswerProgressed() {
  int slots[64];
  int n;
  while ((n = connthrottle::pg::TakeProgressed(slots, 64)) > 0) {
    for (int k = 0; k < n; ++k) {
      Slot* slot = SlotAt(static_cast<uint32>(slots[k]));
      if (pg_atomic_read_u32(&slot->state) != kRunning) continue;
      size_t response = 0;
      if (connthrottle::pg::AnswerIfDone(slots[k], AreaOf(slot), header->area_bytes, &response)) {
        Answer(slot, response);
      }
    }
  }
}

void PublishStats() {
  const connthrottle::pg::PoolServiceStats s = connthrottle::pg::PoolStats();
  const int64 values[kStatCount] = {s.connections_now,     s.tasks_queued_now,
                                    s.connections_started, s.connections_opened,
                                    s.connections_failed,  s.closed_idle,
                                    s.closed_dead,         s.closed_in_transaction,
                                    s.closed_for_waiters,  s.optional_refused,
                                    s.tasks_run,           s.tasks_retried,
                                    s.tasks_cancelled,     s.tasks_handed_back,
                                    s.closed_over_limit,   static_cast<int64>(reloads)};
  for (int k = 0; k < kStatCount; ++k) {
    pg_atomic_write_u64(&header->stats[k], static_cast<uint64>(values[k]));
  }
}

// Answers every request still held (57P01 when told to stop, 08006
// otherwise), then closes the pool and gives back everything this process
// holds in the counter table.
void CommunicatorExit(int, Datum) {
  if (header == nullptr) return;
  pg_atomic_write_u32(&header->pid, 0);
  const bool terminated = got_sigterm;
  for (uint32 i = 0; i < header->slots; ++i) {
    Slot* slot = SlotAt(i);
    const uint32 state = pg_atomic_read_u32(&slot->state);
    if (state != kSubmitted && state != kRunning) continue;
    const size_t n = connthrottle::pg::WriteErrorResponse(
        AreaOf(slot), header->area_bytes, 14 /* absl::StatusCode::kUnavailable */,
        terminated ? "57P01" : "08006",
        terminated ? "connthrottle: the communicator was terminated while it ran this "
                     "execution's tasks"
                   : "connthrottle: the communicator stopped while it ran this execution's tasks");
    Answer(slot, n);
  }
  connthrottle::pg::StopPoolService();
  connthrottle::pg::BackendExit();
  for (int k = 0; k < 2; ++k) pg_atomic_write_u64(&header->stats[k], 0);  // nothing open now
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

// Returns false on postmaster death.
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

void Withdraw() {
  Slot* slot = MySlot();
  if (slot == nullptr) return;
  const uint32 state = pg_atomic_read_u32(&slot->state);
  if (state != kSubmitted && state != kRunning) return;
  pg_atomic_write_u32(&slot->cancel, slot->request_id);
  pg_memory_barrier();
  if (CommunicatorRunning()) SetLatch(header->latch);
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
  pg_memory_barrier();
  if (CommunicatorRunning()) SetLatch(header->latch);
}

ChannelState OpsAwait(size_t* size) {
  Slot* slot = MySlot();
  for (int look = 0; look < 2; ++look) {
    const uint32 state = pg_atomic_read_u32(&slot->state);
    if (state == kDone) {
      pg_read_barrier();
      *size = Min(slot->size, header->area_bytes);
      pg_atomic_write_u32(&slot->state, kFree);
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

}  // namespace

namespace connthrottle::pg {

void SetPoolMessageBytes(int bytes) { message_bytes = bytes; }

size_t CommunicatorShmemBytes() {
  return add_size(MAXALIGN(sizeof(Header)), mul_size(static_cast<Size>(MaxBackends), SlotStride()));
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
  for (uint32 i = 0; i < header->slots; ++i) {
    pg_atomic_init_u32(&SlotAt(i)->state, kFree);
    pg_atomic_init_u32(&SlotAt(i)->cancel, 0);
    pg_atomic_init_u64(&SlotAt(i)->latch, 0);
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
  return {OpsArea, OpsClaim, OpsSubmit, OpsAwait, Withdraw};
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
  int64_t* fields[] = {&out.connections,         &out.tasks_queued,
                       &out.connections_started, &out.connections_opened,
                       &out.connections_failed,  &out.closed_idle,
                       &out.closed_dead,         &out.closed_in_transaction,
                       &out.closed_for_waiters,  &out.optional_refused,
                       &out.tasks_run,           &out.tasks_retried,
                       &out.tasks_cancelled,     &out.tasks_handed_back,
                       &out.closed_over_limit,   &out.reloads};
  for (int k = 0; k < kStatCount; ++k) {
    *fields[k] = static_cast<int64_t>(pg_atomic_read_u64(&header->stats[k]));
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

  notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (notify_fd < 0) {
    ereport(ERROR, (errcode_for_file_access(),
                    errmsg("connthrottle communicator: could not create an eventfd: %m")));
  }
  // Take over the slots: requests an earlier communicator left are answered
  // with 08006 (ServeSlots answers those submitted under the old epoch
  // after this scan passed them).
  pg_atomic_fetch_add_u32(&header->epoch, 1);
  pg_atomic_write_u32(&header->terminating, 0);
  for (uint32 i = 0; i < header->slots; ++i) {
    Slot* slot = SlotAt(i);
    const uint32 state = pg_atomic_read_u32(&slot->state);
    if (state == kSubmitted || state == kRunning) {
      AnswerLost(slot, "connthrottle: the communicator restarted while it held this request");
    }
  }
  header->latch = MyLatch;
  before_shmem_exit(CommunicatorExit, 0);
  connthrottle::pg::StartPoolService(ServiceSettings(), NotifyMain);
  pg_write_barrier();
  pg_atomic_write_u32(&header->pid, static_cast<uint32>(MyProcPid));

  WaitEventSet* set = CreateWaitEventSet(TopMemoryContext, 3);
  AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, nullptr);
  AddWaitEventToSet(set, WL_POSTMASTER_DEATH, PGINVALID_SOCKET, nullptr, nullptr);
  AddWaitEventToSet(set, WL_SOCKET_READABLE, notify_fd, nullptr, nullptr);

  TimestampTz refreshed = GetCurrentTimestamp();
  while (!got_sigterm) {
    WaitEvent events[3];
    const int n = WaitEventSetWait(set, 100, events, 3, PG_WAIT_EXTENSION);
    for (int k = 0; k < n; ++k) {
      if (events[k].events & WL_POSTMASTER_DEATH) proc_exit(1);
      if (events[k].events & WL_LATCH_SET) ResetLatch(MyLatch);
      if (events[k].events & WL_SOCKET_READABLE) {
        uint64 count;
        [[maybe_unused]] ssize_t r = read(notify_fd, &count, sizeof(count));
      }
    }
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
      AnswerRunning();
      PublishStats();
      refreshed = now;
    }
    ServeSlots();
    AnswerProgressed();
  }
  pg_atomic_write_u32(&header->terminating, 1);
  proc_exit(1);  // CommunicatorExit answers, closes and gives back; restarted in a second
}
