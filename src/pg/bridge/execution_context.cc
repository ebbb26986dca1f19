// execution_context.cc — PgExecutionContext, and this backend's context and
// adaptive executor.

#include "pg/bridge/internal/execution_context.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "connthrottle/node_key.h"
#include "pg/bridge/internal/backend_state.h"
#include "pg/bridge/internal/lease_limit.h"
#include "pg/bridge/internal/local_node.h"
#include "pg/bridge/internal/settings.h"
#include "pg/bridge/node_conninfo.h"

namespace connthrottle::pg {
namespace {

// The keywords of `conninfo` that node_conninfo may set, in order.
std::vector<std::pair<std::string, std::string>> AllowedKeywords(const char* conninfo) {
  std::vector<std::pair<std::string, std::string>> allowed;
  if (conninfo[0] == '\0') return allowed;
  if (PQconninfoOption* options = PQconninfoParse(conninfo, nullptr)) {
    for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
      if (o->val != nullptr && NodeConninfoKeywordAllowed(o->keyword)) {
        allowed.emplace_back(o->keyword, o->val);
      }
    }
    PQconninfoFree(options);
  }
  return allowed;
}

}  // namespace

void PgExecutionContext::Prepare(uint32_t database, const Settings& settings,
                                 const ExecutorSettings& executor, int active_client_backends,
                                 bool (*interrupted)(), LocalRunner runner) {
  database_ = database;
  settings_ = settings;
  local_node_ = settings.local_node != nullptr ? settings.local_node : "";
  settings_.local_node = local_node_.c_str();
  dbname_ = executor.database;
  user_ = executor.user;
  active_client_backends_ = active_client_backends;
  interrupted_ = interrupted;
  runner_ = runner;
  cancelled_ = false;
  // node_conninfo was checked keyword by keyword when it was set; parse
  // it once per call and keep only the allowed keywords all the same.
  client_encoding_ = executor.client_encoding != nullptr ? executor.client_encoding : "";
  conninfo_ = AllowedKeywords(executor.node_conninfo != nullptr ? executor.node_conninfo : "");
}

std::string PgExecutionContext::ConninfoSignature() const {
  std::string sig;
  for (const auto& [k, v] : conninfo_) absl::StrAppend(&sig, k, "=", v, "\n");
  return sig;
}

ConnParams PgExecutionContext::ParamsFor(const NodeAddress& node) {
  ConnParams p;
  p.Set("host", node.host)
      .Set("port", std::to_string(node.port))
      .Set("dbname", dbname_)
      .Set("user", user_)
      .Set("application_name", "connthrottle")
      // Marks the connection as this coordinator's (id/incarnation): a
      // worker running connthrottle counts it against the coordinator's
      // lease and its connthrottle.worker_budget (admission.h). A worker
      // without connthrottle keeps it as a placeholder setting.
      // node_conninfo cannot override it.
      .Set("options", absl::StrCat("-c connthrottle.coordinator=", CoordinatorIdentity()));
  for (const auto& [k, v] : conninfo_) p.Set(k, v);
  // Text comes back in the coordinator's encoding (the glue still
  // verifies it): a worker's own default is its database's encoding.
  if (!client_encoding_.empty()) p.Set("client_encoding", client_encoding_);
  return p;
}

bool PgExecutionContext::IsLocal(const NodeAddress& node) {
  absl::StatusOr<NodeKey> key = NodeKey::Create(node.host, node.port, database_);
  if (!key.ok()) return false;
  absl::StatusOr<bool> local = pg::IsLocal(*key, settings_);
  return local.ok() && *local;
}

Limit PgExecutionContext::LimitFor(const NodeAddress& node, bool local) {
  return WithLease(Limit::ForNode(PoolLimitsOf(settings_), local, active_client_backends_),
                   node.host, node.port, local);
}

FullTablePolicy PgExecutionContext::WhenTableFull() { return FullTablePolicyOf(settings_); }

TaskResult PgExecutionContext::RunLocally(const Task& task) {
  TaskResult r;
  r.node = task.node;
  if (runner_ == nullptr) return ExecutionContext::RunLocally(task);
  LocalTaskOutcome out;
  runner_(task.sql.c_str(), &out);
  if (out.cancelled) cancelled_ = true;  // the cancel was spent on the local query
  if (out.ok) {
    r.command_tag = out.command_tag;
    r.row_count = out.row_count;
    if (out.has_value) {
      r.columns.push_back("value");
      r.rows.push_back(
          {out.value != nullptr ? std::optional<std::string>(out.value) : std::nullopt});
    }
  } else {
    r.sqlstate = out.sqlstate;
    r.status = absl::UnknownError(
        absl::StrCat("node ", task.node.ToString(), " (run locally): ", out.message));
  }
  std::free(out.value);
  return r;
}

absl::StatusOr<PgExecutionContext*> MyContext(uint32_t database, const Settings& settings,
                                              const ExecutorSettings& executor,
                                              int active_client_backends, bool (*interrupted)(),
                                              LocalRunner runner) {
  absl::StatusOr<Owner*> owner = ProcessOwner();
  if (!owner.ok()) return owner.status();
  State& s = S();
  if (!s.context) s.context = std::make_unique<PgExecutionContext>();
  const std::string before = s.context->ConninfoSignature();
  s.context->Prepare(database, settings, executor, active_client_backends, interrupted, runner);
  // Idle connections made with other node_conninfo keywords are not reused.
  if (s.executor && s.context->ConninfoSignature() != before) s.executor->CloseIdle();
  return s.context.get();
}

absl::StatusOr<AdaptiveExecutor*> MyExecutor(uint32_t database, const Settings& settings,
                                             const ExecutorSettings& executor,
                                             int active_client_backends, bool (*interrupted)(),
                                             LocalRunner runner) {
  absl::StatusOr<PgExecutionContext*> context =
      MyContext(database, settings, executor, active_client_backends, interrupted, runner);
  if (!context.ok()) return context.status();
  absl::StatusOr<Owner*> owner = ProcessOwner();
  State& s = S();
  ExecutorOptions options;
  options.max_pool_size = std::max(executor.max_pool_size, 1);
  options.max_cached_per_node = std::max(executor.max_cached_per_node, 0);
  options.max_cached_lifetime = absl::Milliseconds(executor.max_cached_lifetime_ms);
  options.connect_timeout = absl::Milliseconds(executor.node_connection_timeout_ms);
  options.slow_start_interval = absl::Milliseconds(std::max(executor.slow_start_interval_ms, 1));
  // run_tasks returns a task's single value or its command tag, and how many
  // rows it returned: one row is all it keeps, however many arrive.
  options.max_rows_kept = 1;
  options.slot_wait_timeout = WaitTimeout(settings);
  if (!s.executor) s.executor = std::make_unique<AdaptiveExecutor>(**owner, *s.context, options);
  s.executor->set_options(options);
  return s.executor.get();
}

}  // namespace connthrottle::pg
