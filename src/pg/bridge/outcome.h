// How a call into the bridge reports back to the PostgreSQL glue: the
// Outcome it returns, and the Wait a waiting call keeps across the
// interrupts the glue handles between its attempts.
//
// The boundary (DESIGN.md): every function of the bridge's glue-facing
// headers (backend_state.h, slots.h, reservations.h, tasks.h,
// distribute.h, table_stats.h, local_node.h, node_conninfo.h) is noexcept
// and reports failure in an Outcome — a plain struct with the SQLSTATE to
// raise and a message in a fixed buffer — so the glue raises the error
// itself, after every C++ frame that owned anything has returned.
// PostgreSQL errors never unwind through the bridge: the glue calls it only
// with arguments it has already checked and converted. These headers
// include no PostgreSQL header and no Abseil header, so that the glue can
// include them after the server's. Each concern has its .cc beside its
// header; its bridge-only half, when it has one, is internal/<concern>.h,
// which only the bridge's .cc files include.
//
// Thread-safety: a backend is single-threaded; all of the bridge's
// backend-side state is per process.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_OUTCOME_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_OUTCOME_H_

#include <cstdint>

namespace connthrottle::pg {

// What a call came to. sqlstate is a PostgreSQL SQLSTATE packed as by
// MAKE_SQLSTATE (0 when ok). `interrupted` means a waiting acquire stopped
// because the interrupt check fired: the glue then processes the interrupt.
struct Outcome {
  int sqlstate = 0;
  bool interrupted = false;
  char message[1024] = {0};
  char detail[512] = {0};

  bool ok() const { return sqlstate == 0 && !interrupted; }
};

// One waiting SQL call's wait, fixed when the call begins and kept across
// the interrupts the glue handles (a config reload): the deadline does not
// move, the wait is counted once, and a timeout error names the timeout as
// it was given.
struct Wait {
  int64_t began_us = 0;       // when the call began (Unix microseconds)
  int64_t timeout_ms = -1;    // -1: no limit
  bool from_setting = false;  // the timeout is connthrottle.connection_wait_timeout
  bool resumed = false;       // set when a call returned interrupted
};
// A wait of `timeout_ms` (-1: no limit) beginning now.
Wait BeginWait(int64_t timeout_ms, bool from_setting) noexcept;

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_OUTCOME_H_
