// The shared counter table in this process, and what this backend gives
// back at the end of a transaction and at exit. The table is laid out once
// by the postmaster and inherited by every backend through fork; a backend
// registers as one of its owners on its first slot or reservation.
// Glue-facing: noexcept where it can fail, plain types (outcome.h).

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_BACKEND_STATE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_BACKEND_STATE_H_

#include <cstddef>
#include <cstdint>

#include "pg/bridge/outcome.h"

namespace connthrottle::pg {

// ---- shared memory (postmaster) ----

// Bytes the table needs, or 0 when the sizes are invalid.
size_t RequiredBytes(uint32_t capacity, uint32_t max_owners);
// Lays out (found == false) or attaches (found == true) the table in a
// region of shared memory, and remembers it for this process.
Outcome SetUpTable(void* region, size_t bytes, uint32_t capacity, uint32_t max_owners, bool found);
// Whether this process has the table (loaded through shared_preload_libraries).
bool TableReady();
// Wakes every waiting backend (after a raised limit).
void WakeAllWaiters();

// ---- transaction end and backend exit ----

// At the end of every top-level transaction: gives back unused
// reservations, abandons an unfinished distribution and forgets the rows
// of the last call.
void EndTransaction();
// Gives back every slot and reservation of this backend, closes its cached
// connections, and unregisters it.
void BackendExit();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_BACKEND_STATE_H_
