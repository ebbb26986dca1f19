// admission.cc — the worker's budget of coordinator connections and its
// leases, PostgreSQL's side: settings, shared memory, the authentication
// hook and the exit callback. See admission.h; the accounting is
// bridge/leases.h over core/lease_table.h.

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "libpq/auth.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
// clang-format on
}

#include "pg/admission.h"

#include <cstring>
#include <ctime>

namespace connthrottle::pg {
namespace {

constexpr char kCoordinatorOption[] = "connthrottle.coordinator";

int worker_budget = -1;
int max_coordinators = 8;
int lease_duration_ms = 3000;
int unleased_connections = -1;
char* coordinator = nullptr;      // what a coordinator connection set; read from the port
char* connection_kind = nullptr;  // 'lease' on a coordinator's lease connection
bool shmem_ready = false;
ClientAuthentication_hook_type prev_client_authentication_hook = nullptr;

LeaseLayout Layout() { return {max_coordinators, MaxBackends}; }

// The value the startup packet's options (`-c name=value`, `--name=value`)
// give connthrottle.coordinator, or nullptr. Points into palloc'd memory.
const char* CoordinatorOption(const Port* port) {
  if (port->cmdline_options == nullptr) return nullptr;
  const size_t length = strlen(port->cmdline_options);
  // pg_split_opts writes at most one argument per two bytes of the string.
  char** argv = static_cast<char**>(palloc((length / 2 + 2) * sizeof(char*)));
  int argc = 0;
  pg_split_opts(argv, &argc, port->cmdline_options);
  const size_t name_length = strlen(kCoordinatorOption);
  const char* found = nullptr;
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
      found = setting + name_length + 1;  // the last one wins, as for the setting itself
    }
  }
  return found;
}

// After every shared-memory exit callback (pgstat's, ProcKill): the
// connection is no longer in pg_stat_activity when it stops counting.
void ReleaseAdmission(int, Datum) { ConnectionGone(); }

void Authenticate(Port* port, int status) {
  if (prev_client_authentication_hook != nullptr) prev_client_authentication_hook(port, status);
  if (status != STATUS_OK || !shmem_ready) return;
  const char* value = CoordinatorOption(port);
  if (value == nullptr) return;
  // Registered before the count is taken, so that nothing between the two
  // can leave a count behind (ConnectionGone does nothing until admitted).
  on_proc_exit(ReleaseAdmission, 0);
  const LeaseConfig config = CurrentLeaseConfig();
  char message[256];
  int live = 0;
  if (AdmitConnection(value, MyProcPid, config, message, sizeof(message), &live)) return;
  ereport(FATAL, (errcode(ERRCODE_TOO_MANY_CONNECTIONS), errmsg("%s", message),
                  errdetail("connthrottle.worker_budget is %d; %d coordinator connections are "
                            "open.",
                            config.budget, live),
                  errhint("The coordinator waits for a slot and tries again; raise "
                          "connthrottle.worker_budget on this worker for more.")));
}

}  // namespace

size_t AdmissionShmemBytes() { return add_size(LeaseShmemBytes(Layout()), 64); }

void AdmissionShmemInit() {
  bool found = false;
  char* raw =
      static_cast<char*>(ShmemInitStruct("connthrottle admission", AdmissionShmemBytes(), &found));
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + 63) & ~uintptr_t{63});
  // A new number per server instance (and crash-restart): a coordinator
  // that sees another one renews before it trusts what it opened.
  uint64_t instance = 0;
  while (!found && instance == 0) {
    if (!pg_strong_random(&instance, sizeof(instance))) {
      instance = static_cast<uint64_t>(time(nullptr));
    }
    instance &= INT64_MAX;  // a positive bigint in SQL
  }
  LeaseShmemAttach(aligned, Layout(), instance, found);
  shmem_ready = true;
}

LeaseConfig CurrentLeaseConfig() {
  return {worker_budget, unleased_connections, lease_duration_ms};
}

void RegisterAdmission() {
  DefineCustomIntVariable(
      "connthrottle.worker_budget",
      "Coordinator connections this server admits at once, from every coordinator together.",
      "Counted are connections whose startup options set connthrottle.coordinator (every "
      "connection of connthrottle's executor and shared pool); those beyond the budget, or "
      "beyond their coordinator's lease, are refused at authentication with SQLSTATE 53300. "
      "-1 admits all (they are still counted).",
      &worker_budget, -1, -1, MAX_BACKENDS, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
  DefineCustomIntVariable(
      "connthrottle.max_coordinators", "Coordinator incarnations that may hold leases at once.",
      "Each holds a lease record from its first lease_renew until its grants have ended and its "
      "connections are gone.",
      &max_coordinators, 8, 1, 1024, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
  DefineCustomIntVariable(
      "connthrottle.lease_duration", "How long a lease of this worker's budget lasts.",
      "A grant ends this long after the lease_renew that made it; coordinators renew every "
      "third of it.",
      &lease_duration_ms, 3000, 300, 3600 * 1000, PGC_SIGHUP, GUC_UNIT_MS, nullptr, nullptr,
      nullptr);
  DefineCustomIntVariable(
      "connthrottle.unleased_connections",
      "Coordinator connections admitted without a lease, within the budget.",
      "Connections that name no coordinator with a lease (older coordinators, those with leases "
      "off). -1: as many as the budget leaves; then the budget bounds them, and a coordinator "
      "may be refused within its lease while they hold it.",
      &unleased_connections, -1, -1, MAX_BACKENDS, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
  DefineCustomStringVariable(
      "connthrottle.coordinator",
      "Set by connthrottle's coordinators on the connections they open to workers.",
      "A worker running connthrottle counts such connections against "
      "connthrottle.worker_budget; '<id>/<incarnation>' counts against that coordinator's "
      "lease.",
      &coordinator, "", PGC_BACKEND, 0, nullptr, nullptr, nullptr);
  DefineCustomStringVariable(
      "connthrottle.connection_kind",
      "Set to 'lease' by connthrottle's coordinators on their lease connections.",
      "A lease connection is not a coordinator connection: it is not counted against "
      "connthrottle.worker_budget.",
      &connection_kind, "", PGC_BACKEND, 0, nullptr, nullptr, nullptr);
  prev_client_authentication_hook = ClientAuthentication_hook;
  ClientAuthentication_hook = Authenticate;
}

}  // namespace connthrottle::pg
