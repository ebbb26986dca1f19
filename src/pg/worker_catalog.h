// connthrottle.worker_node, the catalog of worker nodes, as the SQL
// functions check it. Connections to nodes are made with the server's OS
// user's credentials (~/.pgpass, client certificates, Kerberos, trust
// rules): a role that is not a superuser may only reach the nodes a
// superuser put in the catalog. May raise PostgreSQL errors.

#ifndef CONNTHROTTLE_SRC_PG_WORKER_CATALOG_H_
#define CONNTHROTTLE_SRC_PG_WORKER_CATALOG_H_

#include "pg/bridge/reservations.h"

namespace connthrottle::pg {

// Raises 42501 naming the first of `nodes` not in connthrottle.worker_node,
// unless the current role is a superuser; `what` completes "Only superusers
// may ... on nodes outside the catalog." The catalog is read directly: the
// caller need not have SELECT on it.
void RequireCatalogNodes(const NodeRef* nodes, int count, const char* what);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_WORKER_CATALOG_H_
