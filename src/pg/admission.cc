// admission.cc — the worker's budget of coordinator connections: see
// admission.h.

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "libpq/auth.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
// clang-format on
}

#include "pg/admission.h"

#include <cstring>

namespace connthrottle::pg {
namespace {

constexpr char kCoordinatorOption[] = "connthrottle.coordinator";

struct AdmissionShared {
  pg_atomic_uint32 connections;
  pg_atomic_uint64 admitted;
  pg_atomic_uint64 refused;
};

AdmissionShared* shared = nullptr;
int worker_budget = -1;
char* coordinator = nullptr;  // what a coordinator connection set; unused by the server
bool admitted_here = false;   // this backend holds one of the counted connections
ClientAuthentication_hook_type prev_client_authentication_hook = nullptr;

// Whether the startup packet's options (`-c name=value`, `--name=value`)
// set connthrottle.coordinator.
bool IsCoordinatorConnection(const Port* port) {
  if (port->cmdline_options == nullptr) return false;
  const size_t length = strlen(port->cmdline_options);
  // pg_split_opts writes at most one argument per two bytes of the string.
  char** argv = static_cast<char**>(palloc((length / 2 + 2) * sizeof(char*)));
  int argc = 0;
  pg_split_opts(argv, &argc, port->cmdline_options);
  const size_t name_length = strlen(kCoordinatorOption);
  for (int i = 0; i < argc; ++i) {
    const char* setting = argv[i];
    if (strcmp(setting, "-c") == 0 && i + 1 < argc) {
      setting = argv[++i];
    } else if (strncmp(setting, "-c", 2) == 0) {
      setting += 2;
    } else if (strncmp(setting, "--", 2) == 0) {
      setting += 2;
    } else {
      continue;
    }
    if (strncmp(setting, kCoordinatorOption, name_length) == 0 && setting[name_length] == '=') {
      return true;
    }
  }
  return false;
}

// After every shared-memory exit callback (pgstat's, ProcKill): the
// connection is no longer in pg_stat_activity when it stops counting.
void ReleaseAdmission(int, Datum) {
  if (!admitted_here || shared == nullptr) return;
  admitted_here = false;
  pg_atomic_fetch_sub_u32(&shared->connections, 1);
}

void Authenticate(Port* port, int status) {
  if (prev_client_authentication_hook != nullptr) prev_client_authentication_hook(port, status);
  if (status != STATUS_OK || shared == nullptr || !IsCoordinatorConnection(port)) return;
  // Registered before the count is taken, so that nothing between the two
  // can leave a count behind (the callback does nothing until admitted).
  on_proc_exit(ReleaseAdmission, 0);
  const int budget = worker_budget;
  uint32 n = pg_atomic_read_u32(&shared->connections);
  for (;;) {
    if (budget >= 0 && n >= static_cast<uint32>(budget)) {
      pg_atomic_fetch_add_u64(&shared->refused, 1);
      ereport(FATAL,
              (errcode(ERRCODE_TOO_MANY_CONNECTIONS),
               errmsg("connthrottle: this worker's budget of %d coordinator connections is in use",
                      budget),
               errdetail("connthrottle.worker_budget is %d; %u coordinator connections are open.",
                         budget, n),
               errhint("The coordinator waits for a slot and tries again; raise "
                       "connthrottle.worker_budget on this worker for more.")));
    }
    if (pg_atomic_compare_exchange_u32(&shared->connections, &n, n + 1)) break;
  }
  admitted_here = true;
  pg_atomic_fetch_add_u64(&shared->admitted, 1);
}

}  // namespace

size_t AdmissionShmemBytes() { return MAXALIGN(sizeof(AdmissionShared)); }

void AdmissionShmemInit() {
  bool found = false;
  shared = static_cast<AdmissionShared*>(
      ShmemInitStruct("connthrottle admission", AdmissionShmemBytes(), &found));
  if (found) return;
  pg_atomic_init_u32(&shared->connections, 0);
  pg_atomic_init_u64(&shared->admitted, 0);
  pg_atomic_init_u64(&shared->refused, 0);
}

void RegisterAdmission() {
  DefineCustomIntVariable(
      "connthrottle.worker_budget",
      "Coordinator connections this server admits at once, from every coordinator together.",
      "Counted are connections whose startup options set connthrottle.coordinator (every "
      "connection of connthrottle's executor and shared pool); those beyond the budget are "
      "refused at authentication with SQLSTATE 53300. -1 admits all (they are still counted).",
      &worker_budget, -1, -1, MAX_BACKENDS, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
  DefineCustomStringVariable(
      "connthrottle.coordinator",
      "Set by connthrottle's coordinators on the connections they open to workers.",
      "A worker running connthrottle counts such connections against "
      "connthrottle.worker_budget.",
      &coordinator, "", PGC_BACKEND, 0, nullptr, nullptr, nullptr);
  prev_client_authentication_hook = ClientAuthentication_hook;
  ClientAuthentication_hook = Authenticate;
}

AdmissionFigures ReadAdmission() {
  AdmissionFigures f;
  f.budget = worker_budget;
  if (shared == nullptr) return f;
  f.connections = pg_atomic_read_u32(&shared->connections);
  f.admitted = pg_atomic_read_u64(&shared->admitted);
  f.refused = pg_atomic_read_u64(&shared->refused);
  return f;
}

}  // namespace connthrottle::pg
