// session.cc — the backend-local state of the extension, in plain C++.
// See session.h for the boundary rules; nothing here calls PostgreSQL.

#include "pg/bridge/session.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/executor/copy_stream.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/reservation_ledger.h"
#include "connthrottle/slot.h"
#include "pg/bridge/pool_channel.h"
#include "pg/bridge/process_owner.h"

namespace connthrottle::pg {
namespace {

// SQLSTATE packing, as PostgreSQL's MAKE_SQLSTATE does it.
constexpr int Sqlstate(const char* s) {
  auto six = [](char c) { return (c - '0') & 0x3F; };
  return six(s[0]) + (six(s[1]) << 6) + (six(s[2]) << 12) + (six(s[3]) << 18) + (six(s[4]) << 24);
}
constexpr int kTooManyConnections = Sqlstate("53300");
constexpr int kConfigurationLimitExceeded = Sqlstate("53400");
constexpr int kOutOfMemory = Sqlstate("53200");
constexpr int kInvalidParameterValue = Sqlstate("22023");
constexpr int kObjectNotInPrerequisiteState = Sqlstate("55000");
constexpr int kDataCorrupted = Sqlstate("XX001");
constexpr int kConnectionFailure = Sqlstate("08006");
constexpr int kInternalError = Sqlstate("XX000");

void SetMessage(Outcome& o, std::string_view message, std::string_view detail = {}) {
  size_t n = std::min(message.size(), sizeof(o.message) - 1);
  std::memcpy(o.message, message.data(), n);
  o.message[n] = '\0';
  n = std::min(detail.size(), sizeof(o.detail) - 1);
  std::memcpy(o.detail, detail.data(), n);
  o.detail[n] = '\0';
}

Outcome Fail(int sqlstate, std::string_view message, std::string_view detail = {}) {
  Outcome o;
  o.sqlstate = sqlstate;
  SetMessage(o, message, detail);
  return o;
}

Outcome FromStatus(const absl::Status& status, int exhausted_sqlstate = kTooManyConnections) {
  if (status.ok()) return Outcome{};
  std::string message = absl::StrCat("connthrottle: ", std::string(status.message()));
  // A SQLSTATE chosen where the error arose (the shared pool's channel).
  if (auto state = status.GetPayload(kSqlstatePayload)) {
    const std::string text(*state);
    if (text.size() == 5) {
      char code[6];
      std::memcpy(code, text.data(), 6);
      return Fail(
          Sqlstate(code),
          absl::StrCat("connthrottle: ", absl::StripPrefix(status.message(), "connthrottle: ")));
    }
  }
  if (IsTableFullError(status)) {
    return Fail(kConfigurationLimitExceeded, message,
                "connthrottle.full_table_policy is 'refuse'; raise connthrottle.max_tracked_nodes "
                "(needs a restart) or set the policy to 'admit_uncounted'.");
  }
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
      return Fail(exhausted_sqlstate, message);
    case absl::StatusCode::kInvalidArgument:
      return Fail(kInvalidParameterValue, message);
    case absl::StatusCode::kFailedPrecondition:
      return Fail(kObjectNotInPrerequisiteState, message);
    case absl::StatusCode::kDataLoss:
      return Fail(kDataCorrupted, message);
    case absl::StatusCode::kUnavailable:  // a worker could not be reached or was lost
      return Fail(kConnectionFailure, message);
    default:
      return Fail(kInternalError, message);
  }
}

Outcome Interrupted() {
  Outcome o;
  o.interrupted = true;
  return o;
}

struct Held {
  NodeKey key;
  Slot slot;
};

class PgExecutionContext;

// The process's state. Allocated once and never destroyed by a static
// destructor: BackendExit() gives everything back while shared memory is
// still attached.
struct State {
  std::optional<CounterTable> table;  // set in the postmaster, inherited by fork
  std::unique_ptr<Owner> owner;
  std::vector<Held> held;  // slots taken through SQL, oldest first
  std::unique_ptr<ReservationLedger> ledger;
  absl::flat_hash_map<std::string, bool> host_is_local;
  std::unique_ptr<PgExecutionContext> context;
  std::unique_ptr<AdaptiveExecutor> executor;  // its cached connections hold slots
  std::unique_ptr<CopyStream> copy;
  // Strings behind the rows handed to the glue, valid until the next call.
  std::deque<std::string> strings;
  std::vector<TaskRow> task_rows;
  std::vector<DistributeRow> distribute_rows;
  std::vector<HolderRow> holder_rows;
};

State& S() {
  static State* state = new State();
  return *state;
}

// Runs `body`, turning any C++ exception into an Outcome: nothing may leave
// this layer but an Outcome.
template <typename Body>
Outcome Guard(Body body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return Fail(kOutOfMemory, "connthrottle: out of memory");
  } catch (const std::exception& e) {
    return Fail(kInternalError, absl::StrCat("connthrottle: internal error: ", e.what()));
  } catch (...) {
    return Fail(kInternalError, "connthrottle: internal error");
  }
}

Outcome NotReady() {
  return Fail(kObjectNotInPrerequisiteState,
              "connthrottle: the shared counter table is not set up in this server",
              "connthrottle must be loaded through shared_preload_libraries.");
}

absl::StatusOr<Owner*> MyOwner() {
  State& s = S();
  if (!s.table) return absl::FailedPreconditionError("the shared counter table is not set up");
  if (!s.owner) {
    absl::StatusOr<std::unique_ptr<Owner>> owner = s.table->RegisterOwner();
    if (!owner.ok()) return owner.status();
    s.owner = *std::move(owner);
    s.ledger = std::make_unique<ReservationLedger>(*s.owner);
  }
  return s.owner.get();
}

PoolLimits LimitsOf(const Settings& settings) {
  PoolLimits limits;
  limits.max_shared_pool_size = settings.max_shared_pool_size;
  limits.max_connections = std::max(settings.max_connections, 1);
  limits.local_shared_pool_size = settings.local_shared_pool_size;
  limits.max_client_connections = std::max(settings.max_connections, 1);
  return limits;
}

AcquireOptions OptionsOf(const Settings& settings) {
  AcquireOptions options;
  options.when_full = settings.full_table == FullTable::kRefuse ? FullTablePolicy::kRefuse
                                                                : FullTablePolicy::kAdmitUncounted;
  return options;
}

constexpr size_t kMaxCachedHosts = 256;

// Whether `host` names this machine: localhost, a Unix-socket directory, or a
// name whose addresses include a loopback address or one of this machine's
// interface addresses. Cached per host for the life of the backend (at most
// kMaxCachedHosts of them).
bool HostIsThisMachine(const std::string& host) {
  State& s = S();
  if (auto it = s.host_is_local.find(host); it != s.host_is_local.end()) return it->second;
  bool local = host == "localhost" || (!host.empty() && host[0] == '/');
  if (!local) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* resolved = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &resolved) == 0) {
      ifaddrs* interfaces = nullptr;
      getifaddrs(&interfaces);
      for (addrinfo* a = resolved; a != nullptr && !local; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
          const auto* in = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
          local = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
        } else if (a->ai_family == AF_INET6) {
          const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
          local = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
        }
        for (ifaddrs* i = interfaces; i != nullptr && !local; i = i->ifa_next) {
          if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != a->ai_family) continue;
          if (a->ai_family == AF_INET) {
            local = reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr ==
                    reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr.s_addr;
          } else if (a->ai_family == AF_INET6) {
            local = std::memcmp(&reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr,
                                &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr,
                                sizeof(in6_addr)) == 0;
          }
        }
      }
      if (interfaces != nullptr) freeifaddrs(interfaces);
      freeaddrinfo(resolved);
    }
  }
  // Bounded: the hosts asked about are catalog nodes (or a superuser's),
  // but a backend lives long.
  if (s.host_is_local.size() >= kMaxCachedHosts) s.host_is_local.clear();
  s.host_is_local.emplace(host, local);
  return local;
}

absl::StatusOr<bool> IsLocal(const NodeKey& key, const Settings& settings) {
  std::string_view spec = settings.local_node == nullptr ? "" : settings.local_node;
  if (spec == "none") return false;
  if (spec.empty()) {
    return key.port() == settings.server_port && HostIsThisMachine(std::string(key.host()));
  }
  // "host:port": the last ':' separates them, so bracket-less IPv6 hosts work.
  size_t colon = spec.rfind(':');
  int port = 0;
  if (colon == std::string_view::npos ||
      !absl::SimpleAtoi(absl::string_view(spec.data() + colon + 1, spec.size() - colon - 1),
                        &port)) {
    return absl::InvalidArgumentError(absl::StrCat("connthrottle.local_node \"", std::string(spec),
                                                   "\" is not '', 'none' or 'host:port'"));
  }
  return key.port() == port && key.host() == spec.substr(0, colon);
}

absl::StatusOr<Limit> LimitFor(const NodeKey& key, const Settings& settings,
                               int active_client_backends) {
  absl::StatusOr<bool> local = IsLocal(key, settings);
  if (!local.ok()) return local.status();
  return Limit::ForNode(LimitsOf(settings), *local, active_client_backends);
}

absl::Time Began(const Wait& wait) { return absl::FromUnixMicros(wait.began_us); }

absl::Time Deadline(const Wait& wait) {
  return wait.timeout_ms < 0 ? absl::InfiniteFuture()
                             : Began(wait) + absl::Milliseconds(wait.timeout_ms);
}

// The options of a waiting acquire: the full-table policy, and whether it
// resumes an interrupted wait.
AcquireOptions WaitOptions(const Settings& settings, Wait& wait) {
  AcquireOptions options = OptionsOf(settings);
  if (wait.resumed) options.wait_began = Began(wait);
  return options;
}

// What a waiting call that stopped for an interrupt returns.
Outcome Resume(Wait& wait) {
  wait.resumed = true;
  return Interrupted();
}

const char* KindName(SlotKind kind) {
  switch (kind) {
    case SlotKind::kConnection:
      return "connection";
    case SlotKind::kForced:
      return "forced";
    case SlotKind::kReservation:
      return "reservation";
    case SlotKind::kUncounted:
      return "uncounted";
  }
  return "unknown";
}

void CopyHost(char (&out)[256], std::string_view host) {
  size_t n = std::min(host.size(), sizeof(out) - 1);
  std::memcpy(out, host.data(), n);
  out[n] = '\0';
}

// The message for a waiting acquire that ran out of time, naming the setting.
Outcome WaitTimedOut(const absl::Status& status, const Wait& wait) {
  Outcome o = FromStatus(status);
  if (absl::IsDeadlineExceeded(status)) {
    SetMessage(o, absl::StrCat("connthrottle: ", std::string(status.message())),
               wait.from_setting ? absl::StrCat("connthrottle.connection_wait_timeout is ",
                                                wait.timeout_ms, " ms.")
                                 : absl::StrCat("The timeout given was ", wait.timeout_ms, " ms."));
  }
  return o;
}

// The executor's view of this backend: the settings of the current call, the
// glue's interrupt check and its in-process runner.
class PgExecutionContext : public ExecutionContext {
 public:
  void Prepare(uint32_t database, const Settings& settings, const ExecutorSettings& executor,
               int active_client_backends, bool (*interrupted)(), LocalRunner runner) {
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
    conninfo_.clear();
    const char* conninfo = executor.node_conninfo != nullptr ? executor.node_conninfo : "";
    if (conninfo[0] != '\0') {
      if (PQconninfoOption* options = PQconninfoParse(conninfo, nullptr)) {
        for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
          if (o->val != nullptr && NodeConninfoKeywordAllowed(o->keyword)) {
            conninfo_.emplace_back(o->keyword, o->val);
          }
        }
        PQconninfoFree(options);
      }
    }
  }

  // The extra keywords as given by node_conninfo, in one string, to tell
  // when they changed (cached connections were made with the old ones).
  std::string ConninfoSignature() const {
    std::string sig;
    for (const auto& [k, v] : conninfo_) absl::StrAppend(&sig, k, "=", v, "\n");
    return sig;
  }

  ConnParams ParamsFor(const NodeAddress& node) override {
    ConnParams p;
    p.Set("host", node.host)
        .Set("port", std::to_string(node.port))
        .Set("dbname", dbname_)
        .Set("user", user_)
        .Set("application_name", "connthrottle");
    for (const auto& [k, v] : conninfo_) p.Set(k, v);
    // Text comes back in the coordinator's encoding (the glue still
    // verifies it): a worker's own default is its database's encoding.
    if (!client_encoding_.empty()) p.Set("client_encoding", client_encoding_);
    return p;
  }
  uint32_t DatabaseId() override { return database_; }
  bool IsLocal(const NodeAddress& node) override {
    absl::StatusOr<NodeKey> key = NodeKey::Create(node.host, node.port, database_);
    if (!key.ok()) return false;
    absl::StatusOr<bool> local = pg::IsLocal(*key, settings_);
    return local.ok() && *local;
  }
  Limit LimitFor(const NodeAddress&, bool local) override {
    return Limit::ForNode(LimitsOf(settings_), local, active_client_backends_);
  }
  bool Interrupted() override { return cancelled_ || (interrupted_ != nullptr && interrupted_()); }
  FullTablePolicy WhenTableFull() override { return OptionsOf(settings_).when_full; }
  TaskResult RunLocally(const Task& task) override {
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

 private:
  uint32_t database_ = 0;
  Settings settings_;
  std::string local_node_, dbname_, user_;
  int active_client_backends_ = 0;
  bool (*interrupted_)() = nullptr;
  LocalRunner runner_ = nullptr;
  bool cancelled_ = false;
  std::vector<std::pair<std::string, std::string>> conninfo_;
  std::string client_encoding_;
};

// Prepares this backend's execution context for one call.
absl::StatusOr<PgExecutionContext*> MyContext(uint32_t database, const Settings& settings,
                                              const ExecutorSettings& executor,
                                              int active_client_backends, bool (*interrupted)(),
                                              LocalRunner runner) {
  absl::StatusOr<Owner*> owner = MyOwner();
  if (!owner.ok()) return owner.status();
  State& s = S();
  if (!s.context) s.context = std::make_unique<PgExecutionContext>();
  const std::string before = s.context->ConninfoSignature();
  s.context->Prepare(database, settings, executor, active_client_backends, interrupted, runner);
  // Idle connections made with other node_conninfo keywords are not reused.
  if (s.executor && s.context->ConninfoSignature() != before) s.executor->CloseIdle();
  return s.context.get();
}

absl::Duration WaitTimeout(const Settings& settings) {
  return settings.connection_wait_timeout_ms < 0
             ? absl::Hours(24 * 365)
             : absl::Milliseconds(settings.connection_wait_timeout_ms);
}

absl::StatusOr<AdaptiveExecutor*> MyExecutor(uint32_t database, const Settings& settings,
                                             const ExecutorSettings& executor,
                                             int active_client_backends, bool (*interrupted)(),
                                             LocalRunner runner) {
  absl::StatusOr<PgExecutionContext*> context =
      MyContext(database, settings, executor, active_client_backends, interrupted, runner);
  if (!context.ok()) return context.status();
  absl::StatusOr<Owner*> owner = MyOwner();
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

const char* Keep(std::string text) {
  State& s = S();
  s.strings.push_back(std::move(text));
  return s.strings.back().c_str();
}

void ForgetResults() {
  State& s = S();
  s.strings.clear();
  s.task_rows.clear();
  s.distribute_rows.clear();
}

}  // namespace

absl::StatusOr<Owner*> ProcessOwner() { return MyOwner(); }
PoolLimits PoolLimitsOf(const Settings& settings) { return LimitsOf(settings); }
FullTablePolicy FullTablePolicyOf(const Settings& settings) {
  return OptionsOf(settings).when_full;
}

size_t RequiredBytes(uint32_t capacity, uint32_t max_owners) {
  try {
    absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes({capacity, max_owners, false});
    return bytes.ok() ? *bytes : 0;
  } catch (...) {
    return 0;
  }
}

Outcome SetUpTable(void* region, size_t bytes, uint32_t capacity, uint32_t max_owners, bool found) {
  return Guard([&] {
    absl::StatusOr<CounterTable> table =
        found ? CounterTable::Attach(region, bytes)
              : CounterTable::Initialize(region, bytes, {capacity, max_owners, false});
    if (!table.ok()) return FromStatus(table.status());
    S().table.emplace(*table);
    return Outcome{};
  });
}

bool TableReady() { return S().table.has_value(); }

Wait BeginWait(int64_t timeout_ms, bool from_setting) noexcept {
  Wait wait;
  wait.began_us = absl::ToUnixMicros(absl::Now());
  wait.timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
  wait.from_setting = from_setting;
  return wait;
}

uint32_t Capacity() { return TableReady() ? S().table->options().capacity : 0; }

uint64_t FullTableEvents() { return TableReady() ? S().table->FullTableEvents() : 0; }

bool NodeConninfoKeywordAllowed(const char* keyword) {
  static constexpr std::string_view kAllowed[] = {
      "application_name",
      "channel_binding",
      "connect_timeout",
      "gssencmode",
      "keepalives",
      "keepalives_count",
      "keepalives_idle",
      "keepalives_interval",
      "krbsrvname",
      "ssl_max_protocol_version",
      "ssl_min_protocol_version",
      "sslcert",
      "sslcompression",
      "sslcrl",
      "sslcrldir",
      "sslkey",
      "sslmode",
      "sslrootcert",
      "sslsni",
      "target_session_attrs",
      "tcp_user_timeout",
  };
  if (keyword == nullptr) return false;
  for (std::string_view allowed : kAllowed) {
    if (allowed == keyword) return true;
  }
  return false;
}

Outcome TryAcquire(const char* host, int port, uint32_t database, const Settings& settings,
                   int active_client_backends, bool* acquired) {
  return Guard([&] {
    *acquired = false;
    if (!TableReady()) return NotReady();
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    absl::StatusOr<Owner*> owner = MyOwner();
    if (!owner.ok()) return FromStatus(owner.status(), kConfigurationLimitExceeded);
    absl::StatusOr<Limit> limit = LimitFor(*key, settings, active_client_backends);
    if (!limit.ok()) return FromStatus(limit.status());
    absl::StatusOr<Slot> slot = (*owner)->TryAcquire(*key, *limit, OptionsOf(settings));
    if (absl::IsResourceExhausted(slot.status()) && !IsTableFullError(slot.status())) {
      return Outcome{};  // refused: not an error for an optional acquire
    }
    if (!slot.ok()) return FromStatus(slot.status(), kConfigurationLimitExceeded);
    S().held.push_back({*std::move(key), *std::move(slot)});
    *acquired = true;
    return Outcome{};
  });
}

Outcome AcquireWaiting(const char* host, int port, uint32_t database, const Settings& settings,
                       int active_client_backends, Wait& wait, bool (*interrupted)()) {
  return Guard([&] {
    if (!TableReady()) return NotReady();
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    absl::StatusOr<Owner*> owner = MyOwner();
    if (!owner.ok()) return FromStatus(owner.status(), kConfigurationLimitExceeded);
    absl::StatusOr<Limit> limit = LimitFor(*key, settings, active_client_backends);
    if (!limit.ok()) return FromStatus(limit.status());
    const Limit fixed = *limit;
    absl::StatusOr<Slot> slot = (*owner)->AcquireWaiting(
        *key, [fixed] { return fixed; }, Deadline(wait), interrupted, WaitOptions(settings, wait));
    if (absl::IsCancelled(slot.status())) return Resume(wait);
    if (!slot.ok()) return WaitTimedOut(slot.status(), wait);
    S().held.push_back({*std::move(key), *std::move(slot)});
    return Outcome{};
  });
}

Outcome AcquireForced(const char* host, int port, uint32_t database, const Settings& settings) {
  return Guard([&] {
    if (!TableReady()) return NotReady();
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    absl::StatusOr<Owner*> owner = MyOwner();
    if (!owner.ok()) return FromStatus(owner.status(), kConfigurationLimitExceeded);
    absl::StatusOr<Slot> slot = (*owner)->AcquireForced(*key, OptionsOf(settings));
    if (!slot.ok()) return FromStatus(slot.status(), kConfigurationLimitExceeded);
    S().held.push_back({*std::move(key), *std::move(slot)});
    return Outcome{};
  });
}

Outcome Release(const char* host, int port, uint32_t database, bool* released) {
  return Guard([&] {
    *released = false;
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    std::vector<Held>& held = S().held;
    for (auto it = held.rbegin(); it != held.rend(); ++it) {
      if (it->key == *key) {
        held.erase(std::next(it).base());  // the Slot gives the slot back
        *released = true;
        break;
      }
    }
    return Outcome{};
  });
}

Outcome ReleaseAllSlots(int* count) {
  return Guard([&] {
    *count = static_cast<int>(S().held.size());
    S().held.clear();
    return Outcome{};
  });
}

Outcome ListSlots(HeldSlot* out, int max, int* count) {
  return Guard([&] {
    *count = 0;
    for (const Held& h : S().held) {
      if (*count >= max) break;
      HeldSlot& row = out[(*count)++];
      CopyHost(row.host, h.key.host());
      row.port = h.key.port();
      row.database = h.key.database();
      row.kind = KindName(h.slot.kind());
    }
    return Outcome{};
  });
}

Outcome Reserve(const NodeRef* nodes, int count, uint32_t database, uint32_t user,
                const Settings& settings, int active_client_backends, Wait& wait,
                bool (*interrupted)(), int* reserved) {
  return Guard([&] {
    *reserved = 0;
    if (!TableReady()) return NotReady();
    std::vector<ReservationKey> targets;
    for (int i = 0; i < count; ++i) {
      absl::StatusOr<NodeKey> key = NodeKey::Create(nodes[i].host, nodes[i].port, database);
      if (!key.ok()) return FromStatus(key.status());
      targets.push_back({*std::move(key), user});
    }
    // Fail on a bad local_node setting before taking anything.
    for (const ReservationKey& t : targets) {
      absl::StatusOr<Limit> limit = LimitFor(t.node, settings, active_client_backends);
      if (!limit.ok()) return FromStatus(limit.status());
    }
    absl::StatusOr<Owner*> owner = MyOwner();
    if (!owner.ok()) return FromStatus(owner.status(), kConfigurationLimitExceeded);
    ReservationLedger& ledger = *S().ledger;
    const size_t before = ledger.List().size();
    const std::vector<Held>& held = S().held;
    absl::Status status = ledger.ReserveAll(
        std::move(targets),
        [&](const NodeKey& node) {
          absl::StatusOr<Limit> limit = LimitFor(node, settings, active_client_backends);
          return limit.ok() ? *limit : Limit::AtMost(0);
        },
        Deadline(wait), interrupted,
        [&](const ReservationKey& target) {
          for (const Held& h : held) {
            if (h.key == target.node) return true;
          }
          return false;
        },
        WaitOptions(settings, wait));
    if (absl::IsCancelled(status)) return Resume(wait);
    if (!status.ok()) return WaitTimedOut(status, wait);
    *reserved = static_cast<int>(ledger.List().size() - before);
    return Outcome{};
  });
}

Outcome TryReserve(const char* host, int port, uint32_t database, uint32_t user,
                   const Settings& settings, int active_client_backends, bool* reserved) {
  return Guard([&] {
    *reserved = false;
    if (!TableReady()) return NotReady();
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    absl::StatusOr<Owner*> owner = MyOwner();
    if (!owner.ok()) return FromStatus(owner.status(), kConfigurationLimitExceeded);
    absl::StatusOr<Limit> limit = LimitFor(*key, settings, active_client_backends);
    if (!limit.ok()) return FromStatus(limit.status());
    bool connected = false;
    for (const Held& h : S().held) connected = connected || h.key == *key;
    absl::Status status =
        S().ledger->TryReserve({*key, user}, *limit, connected, OptionsOf(settings));
    if (absl::IsResourceExhausted(status) && !IsTableFullError(status)) return Outcome{};
    if (!status.ok()) return FromStatus(status);
    *reserved = true;
    return Outcome{};
  });
}

Outcome UseReservation(const char* host, int port, uint32_t database, uint32_t user, bool* used) {
  return Guard([&] {
    *used = false;
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    if (!S().ledger) return Outcome{};
    std::optional<Slot> slot = S().ledger->Consume({*key, user});
    if (!slot.has_value()) return Outcome{};
    S().held.push_back({*std::move(key), *std::move(slot)});
    *used = true;
    return Outcome{};
  });
}

Outcome ListReservations(ReservationRow* out, int max, int* count) {
  return Guard([&] {
    *count = 0;
    if (!S().ledger) return Outcome{};
    for (const ReservationLedger::Reservation& r : S().ledger->List()) {
      if (*count >= max) break;
      ReservationRow& row = out[(*count)++];
      CopyHost(row.host, r.key.node.host());
      row.port = r.key.node.port();
      row.database = r.key.node.database();
      row.user = r.key.user;
      row.used = r.used;
    }
    return Outcome{};
  });
}

void EndTransaction() {
  Guard([] {
    State& s = S();
    if (s.ledger) s.ledger->EndTransaction();
    s.copy.reset();  // an unfinished distribution is abandoned
    ForgetResults();
    return Outcome{};
  });
}

Outcome RunTasks(const TaskSpec* tasks, int count, uint32_t database, const Settings& settings,
                 const ExecutorSettings& executor, int active_client_backends,
                 bool (*interrupted)(), LocalRunner runner, const ChannelOps* channel,
                 const TaskRow** rows) {
  return Guard([&] {
    *rows = nullptr;
    ForgetResults();
    if (!TableReady()) return NotReady();
    std::vector<Task> list;
    list.reserve(count);
    for (int i = 0; i < count; ++i) {
      list.push_back({{tasks[i].host, tasks[i].port}, tasks[i].sql, true});
    }
    absl::StatusOr<ExecutionResult> result;
    if (channel != nullptr) {
      absl::StatusOr<PgExecutionContext*> context =
          MyContext(database, settings, executor, active_client_backends, interrupted, runner);
      if (!context.ok()) return FromStatus(context.status(), kConfigurationLimitExceeded);
      // run_tasks keeps one row per task, as with the direct transport.
      PoolChannel pool(**context, *channel, /*max_rows_kept=*/1, WaitTimeout(settings));
      result = pool.Execute(std::move(list));
    } else {
      absl::StatusOr<AdaptiveExecutor*> ex =
          MyExecutor(database, settings, executor, active_client_backends, interrupted, runner);
      if (!ex.ok()) return FromStatus(ex.status(), kConfigurationLimitExceeded);
      result = (*ex)->Execute(std::move(list));
    }
    if (absl::IsCancelled(result.status())) return Interrupted();
    if (!result.ok()) return FromStatus(result.status());
    State& s = S();
    for (const TaskResult& t : result->tasks) {
      TaskRow row{};
      row.host = Keep(t.node.host);
      row.port = t.node.port;
      row.success = t.status.ok();
      row.sqlstate = Keep(t.sqlstate);
      if (t.status.ok()) {
        const bool single = t.row_count == 1 && t.rows.size() == 1 && t.rows[0].size() == 1;
        row.result = single ? (t.rows[0][0].has_value() ? Keep(*t.rows[0][0]) : nullptr)
                            : Keep(t.command_tag);
        row.error = nullptr;
      } else {
        row.result = nullptr;
        row.error = Keep(std::string(t.status.message()));
      }
      row.ran_locally = t.ran_locally;
      row.connection = t.connection;
      row.rows = t.row_count;
      row.queued_us = absl::ToInt64Microseconds(t.queued);
      row.run_us = absl::ToInt64Microseconds(t.run);
      s.task_rows.push_back(row);
    }
    *rows = s.task_rows.data();
    return Outcome{};
  });
}

Outcome BeginDistribute(const NodeRef* nodes, int count, const char* copy_sql, uint32_t database,
                        const Settings& settings, const ExecutorSettings& executor,
                        int active_client_backends, Wait& wait, bool (*interrupted)(),
                        bool (*stream_interrupted)()) {
  return Guard([&] {
    ForgetResults();
    if (!TableReady()) return NotReady();
    State& s = S();
    s.copy.reset();
    absl::StatusOr<AdaptiveExecutor*> ex =
        MyExecutor(database, settings, executor, active_client_backends, interrupted, nullptr);
    if (!ex.ok()) return FromStatus(ex.status(), kConfigurationLimitExceeded);
    std::vector<NodeAddress> targets;
    for (int i = 0; i < count; ++i) targets.push_back({nodes[i].host, nodes[i].port});
    absl::StatusOr<std::unique_ptr<CopyStream>> copy =
        CopyStream::Begin(**ex, std::move(targets), copy_sql, Deadline(wait), interrupted,
                          wait.resumed ? std::optional<absl::Time>(Began(wait)) : std::nullopt);
    if (absl::IsCancelled(copy.status())) return Resume(wait);
    if (!copy.ok()) return WaitTimedOut(copy.status(), wait);
    s.copy = *std::move(copy);
    if (stream_interrupted != nullptr) s.copy->set_interrupt(stream_interrupted);
    return Outcome{};
  });
}

Outcome DistributeOne(int node, const char* row, size_t length) {
  return Guard([&] {
    State& s = S();
    if (!s.copy) return Fail(kObjectNotInPrerequisiteState, "connthrottle: no distribution open");
    absl::Status status = s.copy->Send(static_cast<size_t>(node), std::string_view(row, length));
    if (absl::IsCancelled(status)) return Interrupted();
    return FromStatus(status);
  });
}

Outcome FinishDistribute(const DistributeRow** rows, int* count) {
  return Guard([&] {
    *rows = nullptr;
    *count = 0;
    State& s = S();
    if (!s.copy) return Fail(kObjectNotInPrerequisiteState, "connthrottle: no distribution open");
    absl::StatusOr<std::vector<CopyStream::NodeResult>> results = s.copy->Finish();
    if (absl::IsCancelled(results.status())) {
      s.copy.reset();  // cancels the workers' COPY, gives back the slots
      return Interrupted();
    }
    s.copy.reset();
    if (!results.ok()) return FromStatus(results.status());
    for (const CopyStream::NodeResult& r : *results) {
      s.distribute_rows.push_back(
          {Keep(r.node.host), r.node.port, static_cast<int64_t>(r.rows_sent), r.status.ok(),
           r.status.ok() ? nullptr : Keep(std::string(r.status.message()))});
    }
    *rows = s.distribute_rows.data();
    *count = static_cast<int>(s.distribute_rows.size());
    return Outcome{};
  });
}

Outcome NodeStats(NodeRow* out, int max, int* count) {
  return Guard([&] {
    *count = 0;
    if (!TableReady()) return NotReady();
    for (const KeyStats& k : S().table->Snapshot()) {
      if (*count >= max) break;
      NodeRow& row = out[(*count)++];
      CopyHost(row.host, k.host);
      row.port = k.port;
      row.database = k.database;
      row.connections = k.connections;
      row.forced = k.forced;
      row.reserved = k.reserved;
      row.waiters = k.waiters;
      row.acquired = k.acquired;
      row.refused = k.refused;
      row.waited = k.waited;
      row.forced_total = k.forced_total;
      row.wakeups = k.wakeups;
      row.cached = k.parked;
      row.wait_time_us = absl::ToInt64Microseconds(k.wait_time);
    }
    return Outcome{};
  });
}

Outcome Holders(const HolderRow** rows, int* count) {
  return Guard([&] {
    *count = 0;
    if (!TableReady()) return NotReady();
    std::vector<HolderRow>& out = S().holder_rows;
    out.clear();
    for (const Holding& h : S().table->Holders()) {
      HolderRow& row = out.emplace_back();
      row.pid = h.pid;
      CopyHost(row.host, h.host);
      row.port = h.port;
      row.database = h.database;
      row.connections = h.connections;
      row.forced = h.forced;
      row.reserved = h.reserved;
      row.waiting = h.waiting;
    }
    *rows = out.data();
    *count = static_cast<int>(out.size());
    return Outcome{};
  });
}

Outcome TableStatistics(TableRow* out) {
  return Guard([&] {
    if (!TableReady()) return NotReady();
    TableStats t = S().table->Stats();
    *out = TableRow{t.capacity,
                    t.entries_in_use,
                    t.owners,
                    t.max_owners,
                    t.uncounted_in_use,
                    t.full_table_events,
                    t.entries_created,
                    t.entries_dropped,
                    t.acquired,
                    t.refused,
                    t.waited,
                    t.forced_total,
                    absl::ToInt64Microseconds(t.wait_time),
                    t.wakeups};
    return Outcome{};
  });
}

Outcome Audit() {
  return Guard([] {
    if (!TableReady()) return NotReady();
    return FromStatus(S().table->Audit());
  });
}

void WakeAllWaiters() {
  Guard([] {
    if (TableReady()) S().table->WakeAllWaiters();
    return Outcome{};
  });
}

Outcome IsLocalNode(const char* host, int port, const Settings& settings, bool* local) {
  return Guard([&] {
    *local = false;
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, 0);
    if (!key.ok()) return FromStatus(key.status());
    absl::StatusOr<bool> is_local = IsLocal(*key, settings);
    if (!is_local.ok()) return FromStatus(is_local.status());
    *local = *is_local;
    return Outcome{};
  });
}

void BackendExit() {
  Guard([] {
    State& s = S();
    s.copy.reset();
    s.executor.reset();  // closes cached connections, giving back their slots
    s.held.clear();
    s.ledger.reset();  // gives back unused reservations
    s.owner.reset();   // gives back anything still recorded, and unregisters
    return Outcome{};
  });
}

}  // namespace connthrottle::pg
