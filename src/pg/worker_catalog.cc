// worker_catalog.cc — which nodes a role that is not a superuser may reach.

extern "C" {
// clang-format off
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
// clang-format on
}

#include "pg/worker_catalog.h"

namespace connthrottle::pg {
namespace {

// The nodes of connthrottle.worker_node, read directly (the caller need not
// have SELECT on it: the check below is what protects it).
struct CatalogNode {
  char* host;
  int32 port;
};

int ReadCatalog(CatalogNode** out) {
  Oid relid = RangeVarGetRelid(
      makeRangeVar(const_cast<char*>("connthrottle"), const_cast<char*>("worker_node"), -1),
      AccessShareLock, false);
  Relation rel = table_open(relid, AccessShareLock);
  TupleDesc desc = RelationGetDescr(rel);
  const int host_att = 2, port_att = 3;  // node_id, host, port, added_at
  if (desc->natts < port_att ||
      strcmp(NameStr(TupleDescAttr(desc, host_att - 1)->attname), "host") != 0 ||
      strcmp(NameStr(TupleDescAttr(desc, port_att - 1)->attname), "port") != 0) {
    elog(ERROR, "connthrottle: connthrottle.worker_node does not have the expected columns");
  }
  Snapshot snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
  SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, nullptr);
  int count = 0, size = 16;
  *out = static_cast<CatalogNode*>(palloc(sizeof(CatalogNode) * size));
  while (HeapTuple tuple = systable_getnext(scan)) {
    bool host_null = false, port_null = false;
    Datum host = heap_getattr(tuple, host_att, desc, &host_null);
    Datum port = heap_getattr(tuple, port_att, desc, &port_null);
    if (host_null || port_null) continue;
    if (count == size) {
      size *= 2;
      *out = static_cast<CatalogNode*>(repalloc(*out, sizeof(CatalogNode) * size));
    }
    (*out)[count++] = {TextDatumGetCString(host), DatumGetInt32(port)};
  }
  systable_endscan(scan);
  table_close(rel, AccessShareLock);
  return count;
}

bool InCatalog(const CatalogNode* catalog, int n, const char* host, int32 port) {
  for (int i = 0; i < n; ++i) {
    if (catalog[i].port == port && strcmp(catalog[i].host, host) == 0) return true;
  }
  return false;
}

}  // namespace

void RequireCatalogNodes(const NodeRef* nodes, int count, const char* what) {
  if (superuser()) return;
  CatalogNode* catalog = nullptr;
  const int n = ReadCatalog(&catalog);
  for (int i = 0; i < count; ++i) {
    if (!InCatalog(catalog, n, nodes[i].host, nodes[i].port)) {
      ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                      errmsg("connthrottle: node %s:%d is not in connthrottle.worker_node",
                             nodes[i].host, nodes[i].port),
                      errdetail("Only superusers may %s on nodes outside the catalog.", what)));
    }
  }
}

}  // namespace connthrottle::pg
