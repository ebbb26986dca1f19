// Reservations taken through SQL (reserve, try_reserve, use_reservation,
// reservations): slots taken up front for (node, database, user) before the
// connection is known to be needed. Reserving for several nodes always
// proceeds in the global order (reservation_ledger.h), so two sessions never
// each hold what the other waits for; unused reservations go back at the end
// of the transaction (EndTransaction). Glue-facing (outcome.h); errors as in
// slots.h.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_RESERVATIONS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_RESERVATIONS_H_

#include <cstdint>

#include "pg/bridge/outcome.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// A node as the glue passes it: host (canonical) and port.
struct NodeRef {
  const char* host;
  int port;
};
// Reserves a slot for every node not reserved or held yet, in global order,
// waiting for each; all or nothing. *reserved is the number newly taken.
// Interrupted as AcquireWaiting (slots.h).
Outcome Reserve(const NodeRef* nodes, int count, uint32_t database, uint32_t user,
                const Settings& settings, int active_client_backends, Wait& wait,
                bool (*interrupted)(), int* reserved);
// Reserves a slot for the node if one is free now. *reserved is false only
// when it was refused (not an error); true also when the node was reserved
// or held by the session already.
Outcome TryReserve(const char* host, int port, uint32_t database, uint32_t user,
                   const Settings& settings, int active_client_backends, bool* reserved);
// Turns the reservation into a slot held by the session (the connection
// opened); *used is false when there is no unused reservation for the node.
Outcome UseReservation(const char* host, int port, uint32_t database, uint32_t user, bool* used);

struct ReservationRow {
  char host[256];
  int port;
  uint32_t database;
  uint32_t user;
  bool used;
};
// Copies up to `max` of this session's reservations into `out`.
Outcome ListReservations(ReservationRow* out, int max, int* count);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_RESERVATIONS_H_
