// lease_board.cc — the coordinator's lease board: see lease_board.h.

#include "pg/bridge/lease_board.h"

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <new>

#include "core/lease_table.h"

namespace connthrottle::pg {
namespace {

constexpr int kHostWords = 32;  // host names of at most 255 bytes (NodeKey's maximum)
constexpr int kErrorWords = kBoardErrorBytes / 8;

// Text packed in words that readers load while the writer may store: a
// host name, an error.
template <int kWords>
struct Words {
  uint64_t w[kWords] = {};
  explicit Words(const char* text) { memcpy(w, text, std::min(strlen(text), sizeof(w) - 1)); }
};
using HostName = Words<kHostWords>;

struct Entry {
  std::atomic<uint32_t> seq{0};  // odd while the writer changes the entry
  std::atomic<int32_t> port{0};  // 0: free
  std::atomic<uint64_t> host[kHostWords] = {};
  std::atomic<int32_t> kind{0};
  std::atomic<int32_t> limit{0};
  std::atomic<int32_t> state{0};
  std::atomic<int64_t> deadline{0};
  std::atomic<uint64_t> error[kErrorWords] = {};
};

struct Board {
  char id[64] = {};
  uint64_t incarnation = 0;
  std::atomic<int32_t> mode{0};  // LeaseMode
  std::atomic<int32_t> used{0};  // entries ever written: readers scan these
  Entry entries[kLeaseBoardNodes];
};

constexpr int kModeOn = 2;  // LeaseMode::kOn

Board* board = nullptr;
char identity[96] = "on";

bool Names(const Entry& e, const HostName& host, int port) {
  if (e.port.load(std::memory_order_relaxed) != port) return false;
  for (int i = 0; i < kHostWords; ++i) {
    if (e.host[i].load(std::memory_order_relaxed) != host.w[i]) return false;
  }
  return true;
}

// The reader's side of an entry's seqlock: runs `read` (relaxed loads of
// the entry) until no write began or ended meanwhile.
template <typename Read>
void ReadConsistently(const Entry& e, Read read) {
  for (int spins = 0;; ++spins) {
    const uint32_t before = e.seq.load(std::memory_order_acquire);
    if (before & 1) {  // being written: read again
      if (spins % 64 == 63) sched_yield();
      continue;
    }
    read();
    std::atomic_thread_fence(std::memory_order_acquire);
    if (e.seq.load(std::memory_order_relaxed) == before) return;
  }
}

}  // namespace

size_t LeaseBoardBytes() noexcept { return sizeof(Board); }

void LeaseBoardAttach(void* memory, bool found, const char* id, uint64_t incarnation) noexcept {
  board = static_cast<Board*>(memory);
  if (!found) {
    new (board) Board();
    snprintf(board->id, sizeof(board->id), "%s", id);
    board->incarnation = incarnation;
  }
  snprintf(identity, sizeof(identity), "%s/%llu", board->id,
           static_cast<unsigned long long>(board->incarnation));
}

bool LeaseBoardReady() noexcept { return board != nullptr; }
bool IsValidCoordinatorId(const char* id) noexcept { return ValidCoordinatorId(id); }
const char* CoordinatorIdentity() noexcept { return identity; }
const char* CoordinatorId() noexcept { return board != nullptr ? board->id : ""; }
uint64_t CoordinatorIncarnation() noexcept { return board != nullptr ? board->incarnation : 0; }

int LeaseLimit(const char* host_name, int port) noexcept {
  if (board == nullptr) return -1;
  const int unknown = board->mode.load(std::memory_order_relaxed) == kModeOn ? 0 : -1;
  if (strlen(host_name) >= 8 * kHostWords) return unknown;
  const HostName host(host_name);
  const int used = board->used.load(std::memory_order_acquire);
  for (int i = 0; i < used; ++i) {
    const Entry& e = board->entries[i];
    bool names = false;
    int kind = 0, limit = 0;
    int64_t deadline = 0;
    ReadConsistently(e, [&] {
      names = Names(e, host, port);
      if (!names) return;
      kind = e.kind.load(std::memory_order_relaxed);
      limit = e.limit.load(std::memory_order_relaxed);
      deadline = e.deadline.load(std::memory_order_relaxed);
    });
    if (!names) continue;  // another node's
    switch (static_cast<BoardKind>(kind)) {
      case BoardKind::kNone:
        return -1;
      case BoardKind::kZero:
        return 0;
      case BoardKind::kLeased:
        return BootClockNanos() < deadline ? limit : 0;
    }
    return -1;
  }
  return unknown;
}

void SetLeaseBoardMode(int mode) noexcept {
  if (board != nullptr) board->mode.store(mode, std::memory_order_relaxed);
}

namespace {

// The writer's side of an entry's seqlock.
void Write(Entry& e, const HostName& host, int port, const BoardLease& lease) {
  const uint32_t s = e.seq.load(std::memory_order_relaxed);
  e.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  for (int i = 0; i < kHostWords; ++i) e.host[i].store(host.w[i], std::memory_order_relaxed);
  e.port.store(port, std::memory_order_relaxed);
  e.kind.store(static_cast<int32_t>(lease.kind), std::memory_order_relaxed);
  e.limit.store(lease.limit, std::memory_order_relaxed);
  e.state.store(lease.state, std::memory_order_relaxed);
  e.deadline.store(lease.deadline, std::memory_order_relaxed);
  const Words<kErrorWords> error(lease.error);
  for (int i = 0; i < kErrorWords; ++i) e.error[i].store(error.w[i], std::memory_order_relaxed);
  e.seq.store(s + 2, std::memory_order_release);
}

}  // namespace

bool PublishLease(const char* host_name, int port, const BoardLease& lease) noexcept {
  if (board == nullptr || strlen(host_name) >= 8 * kHostWords) return false;
  const HostName host(host_name);
  Entry* free_entry = nullptr;
  const int used = board->used.load(std::memory_order_relaxed);
  for (int i = 0; i < kLeaseBoardNodes; ++i) {
    Entry& e = board->entries[i];
    if (i < used && Names(e, host, port)) {
      Write(e, host, port, lease);
      return true;
    }
    if (free_entry == nullptr && e.port.load(std::memory_order_relaxed) == 0) free_entry = &e;
  }
  if (free_entry == nullptr) return false;
  Write(*free_entry, host, port, lease);
  const int index = static_cast<int>(free_entry - board->entries);
  if (board->used.load(std::memory_order_relaxed) <= index) {
    board->used.store(index + 1, std::memory_order_release);
  }
  return true;
}

void RemoveLease(const char* host_name, int port) noexcept {
  if (board == nullptr || strlen(host_name) >= 8 * kHostWords) return;
  const HostName host(host_name);
  const int used = board->used.load(std::memory_order_relaxed);
  for (int i = 0; i < used; ++i) {
    Entry& e = board->entries[i];
    if (Names(e, host, port)) Write(e, HostName(""), 0, BoardLease{BoardKind::kNone, 0, 0, 0});
  }
}

int ReadLeaseBoard(LeaseBoardRow* rows, int max) noexcept {
  if (board == nullptr) return 0;
  const int used = board->used.load(std::memory_order_acquire);
  int n = 0;
  for (int i = 0; i < used && n < max; ++i) {
    const Entry& e = board->entries[i];
    LeaseBoardRow& row = rows[n];
    uint64_t host[kHostWords], error[kErrorWords];
    ReadConsistently(e, [&] {
      for (int w = 0; w < kHostWords; ++w) host[w] = e.host[w].load(std::memory_order_relaxed);
      for (int w = 0; w < kErrorWords; ++w) error[w] = e.error[w].load(std::memory_order_relaxed);
      row.port = e.port.load(std::memory_order_relaxed);
      row.lease.kind = static_cast<BoardKind>(e.kind.load(std::memory_order_relaxed));
      row.lease.limit = e.limit.load(std::memory_order_relaxed);
      row.lease.state = e.state.load(std::memory_order_relaxed);
      row.lease.deadline = e.deadline.load(std::memory_order_relaxed);
    });
    if (row.port == 0) continue;  // a free entry
    memcpy(row.host, host, sizeof(row.host) - 1);
    row.host[sizeof(row.host) - 1] = '\0';
    memcpy(row.lease.error, error, sizeof(row.lease.error) - 1);
    row.lease.error[sizeof(row.lease.error) - 1] = '\0';
    row.left_ns = row.lease.deadline - BootClockNanos();
    ++n;
  }
  return n;
}

}  // namespace connthrottle::pg
