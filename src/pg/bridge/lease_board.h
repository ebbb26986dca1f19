// lease_board.h — the coordinator's leases as every process of it sees them
// (issue 28, docs/budget.md, "The coordinator's side"): a board in shared
// memory where the communicator's lease service publishes each worker's
// lease, and from which every acquire of a slot (sessions' direct
// transport, the shared pool) reads the node's limit. Also this
// coordinator's identity at the workers: the id and the incarnation its
// data connections name (`connthrottle.coordinator=<id>/<incarnation>`).
//
// One writer (the lease service's thread), any number of readers: each
// entry is a seqlock, so a reader never waits and never sees a torn entry.
// A reader checks a lease's deadline itself (CLOCK_BOOTTIME): a lease
// service that stopped cannot leave a lapsed lease usable.
// Glue-facing (outcome.h): noexcept, plain values, no PostgreSQL or Abseil
// header.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_LEASE_BOARD_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_LEASE_BOARD_H_

#include <cstddef>
#include <cstdint>

namespace connthrottle::pg {

inline constexpr int kLeaseBoardNodes = 1024;

size_t LeaseBoardBytes() noexcept;
// Lays the board out in `memory` (8-aligned) or attaches to it (`found`).
// `id` (at most 63 bytes, no '/') and `incarnation` (not 0) name this
// coordinator until the next crash-restart.
void LeaseBoardAttach(void* memory, bool found, const char* id, uint64_t incarnation) noexcept;
bool LeaseBoardReady() noexcept;
// Whether `id` may name a coordinator (core/lease_table.h's ValidCoordinatorId).
bool IsValidCoordinatorId(const char* id) noexcept;

// The value data connections give connthrottle.coordinator: "<id>/<incarnation>"
// (a pointer into this process's copy; "on" without a board).
const char* CoordinatorIdentity() noexcept;
const char* CoordinatorId() noexcept;
uint64_t CoordinatorIncarnation() noexcept;

// What leases say about node (host, port) now: -1 when they do not limit
// it (no lease service, worker_leases off, a worker without a budget or
// not reached yet under auto); otherwise the connections allowed (0 once
// the lease's deadline has passed, and for a node without a lease under
// worker_leases = on).
int LeaseLimit(const char* host, int port) noexcept;
// The lease service's mode (LeaseMode as an int): under `on` a node the
// board does not know gets 0.
void SetLeaseBoardMode(int mode) noexcept;

// The lease service's side. kind: kNone (no limit), kLeased (grant until
// deadline), kZero (worker_leases = on without a lease).
enum class BoardKind : int { kNone = 0, kLeased = 1, kZero = 2 };
inline constexpr size_t kBoardErrorBytes = 128;
struct BoardLease {
  BoardKind kind;
  int limit;
  int64_t deadline;  // CLOCK_BOOTTIME ns (kLeased)
  int state;         // LeaseState, for lease_status()
  // Why the lease holder's last attempt failed ("" when it did not), cut to
  // kBoardErrorBytes - 1 bytes.
  char error[kBoardErrorBytes] = {};
};
// Publishes node (host, port)'s lease; false when the board is full (the
// node is then not limited by leases: the worker's admission still is).
bool PublishLease(const char* host, int port, const BoardLease& lease) noexcept;
void RemoveLease(const char* host, int port) noexcept;

// Every lease on the board now, for lease_status(): at most `max` rows,
// returns how many it copied. Any process.
struct LeaseBoardRow {
  char host[256];
  int port;
  BoardLease lease;
  int64_t left_ns;  // a kLeased lease's deadline less the time of the read
};
int ReadLeaseBoard(LeaseBoardRow* rows, int max) noexcept;

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_LEASE_BOARD_H_
