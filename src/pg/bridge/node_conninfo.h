// The libpq keywords connthrottle.node_conninfo may add to every connection
// to a worker node. The glue checks the setting with this list when it is
// set (module.cc); the execution context applies only these keywords when
// it builds a connection's parameters (internal/execution_context.h).
// Glue-facing: plain C++, no PostgreSQL or Abseil header.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_NODE_CONNINFO_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_NODE_CONNINFO_H_

namespace connthrottle::pg {

// Whether connthrottle.node_conninfo may set the libpq keyword `keyword`:
// TLS, timeouts, keepalives, target_session_attrs, application_name and the
// like. Never host, port, dbname, user, password, passfile, service or
// options: those choose where a connection goes and who it claims to be.
// False for nullptr.
bool NodeConninfoKeywordAllowed(const char* keyword);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_NODE_CONNINFO_H_
