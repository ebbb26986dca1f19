// Slots held through SQL (try_acquire, acquire, force_acquire, release,
// release_all, session_slots): each call names one node by (host, port,
// database) and takes or gives back one slot this session holds until it
// releases it or exits. Glue-facing (outcome.h). Errors: 55000 when the
// table is not set up, 22023 for an invalid node or local_node setting,
// 53400 when the backend cannot register as an owner or the table is full
// under the 'refuse' policy, 53300 when a waiting acquire times out.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_SLOTS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_SLOTS_H_

#include <cstdint>

#include "pg/bridge/outcome.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// Optional acquire; *acquired tells whether a slot was taken (a refusal is
// not an error).
Outcome TryAcquire(const char* host, int port, uint32_t database, const Settings& settings,
                   int active_client_backends, bool* acquired);
// Waiting acquire within `wait`. Returns with interrupted set when
// `interrupted()` returned true; the glue handles the interrupt and calls
// again with the same `wait`.
Outcome AcquireWaiting(const char* host, int port, uint32_t database, const Settings& settings,
                       int active_client_backends, Wait& wait, bool (*interrupted)());
// Forced acquire: counted even above the limit.
Outcome AcquireForced(const char* host, int port, uint32_t database, const Settings& settings);
// Gives back the most recently taken slot this session holds for the node.
Outcome Release(const char* host, int port, uint32_t database, bool* released);
// Gives back every slot this session holds through SQL; *count says how many.
Outcome ReleaseAllSlots(int* count);

struct HeldSlot {
  char host[256];
  int port;
  uint32_t database;
  const char* kind;  // static string
};
// Copies up to `max` of this session's slots into `out`, oldest first;
// *count is the number.
Outcome ListSlots(HeldSlot* out, int max, int* count);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_SLOTS_H_
