// Sql mode's clients: SqlSession runs one operation at a time in one
// coordinator session and says what it came to; SqlClients runs a session
// per thread, tallies the outcomes and, after the run, waits for the
// coordinator's counters to hold nothing but the shared pool's connections.

#include "stress/sql_clients.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace connthrottle::stress {

// What one operation came to.
struct OpOutcome {
  bool ok = false;
  bool too_many_clients = false;
  bool hung = false;
  int64_t micros = 0;
  std::string error;  // the first error seen, when !ok
  // The SQLSTATE of `error` where known ("" for distribute's per-node
  // errors, which carry none).
  std::string sqlstate;
};

namespace {

std::string ArrayLiteral(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  for (const std::string& i : items) quoted.push_back(absl::StrCat("\"", i, "\""));
  return absl::StrCat("{", absl::StrJoin(quoted, ","), "}");
}

// An operation's tasks as the arrays of run_tasks and distribute.
struct TaskArrays {
  std::vector<std::string> hosts, ports, commands;
};

// SQL mode, once the client sessions are closed: how long until every
// coordinator's counters hold nothing but the shared pool's connections,
// or what was left after 5 x --settle; then the forced connections (the
// most any coordinator forced).
void AwaitSqlCountersZero(const Cluster& cluster, absl::Duration settle, RunData& run) {
  const absl::Time stopped = absl::Now();
  std::vector<absl::StatusOr<std::unique_ptr<PgClient>>> coordinators;
  for (const Endpoint& e : cluster.coordinators) {
    coordinators.push_back(cluster.Connect(e, "connthrottle-monitor"));
  }
  AwaitCountersZero(
      stopped, settle,
      [&]() -> std::optional<std::string> {
        std::string text;
        for (size_t i = 0; i < coordinators.size(); ++i) {
          if (!coordinators[i].ok()) return std::nullopt;
          // Every slot given back, but those of the shared pool's
          // connections, which outlive the run (pool_idle_timeout). The
          // nodes' rows (database NULL): a database's row, with the
          // per-database bound, counts the same slots again.
          absl::StatusOr<cluster::QueryResult> left =
              (*coordinators[i])
                  ->Query(
                      "SELECT host || ':' || port || '=' || connections || '+' || waiters "
                      "FROM connthrottle.nodes WHERE waiters > 0 OR (database IS NULL AND "
                      "(SELECT sum(connections) FROM connthrottle.nodes WHERE database IS NULL) <> "
                      "(SELECT connections FROM connthrottle.pool_stats()))");
          if (!left.ok()) return std::nullopt;
          for (const auto& row : left->rows) {
            absl::StrAppend(&text,
                            coordinators.size() > 1 ? cluster.coordinators[i].name + " " : "",
                            *row[0], " ");
          }
        }
        return text;
      },
      run);
  int forced = 0;
  for (auto& c : coordinators) {
    if (!c.ok()) continue;
    absl::StatusOr<std::string> v =
        (*c)->QueryValue("SELECT coalesce(max(forced), 0) FROM connthrottle.nodes");
    if (v.ok()) forced = std::max(forced, std::atoi(v->c_str()));
  }
  for (WorkerFigures& w : run.workers) w.forced = forced;
}

}  // namespace

// One sql-mode client: a coordinator session, as the role and in the
// database AssignClient gives client `index`.
class SqlSession {
 public:
  SqlSession(const Cluster& cluster, const Options& options, int index, uint64_t seed)
      : cluster_(cluster),
        options_(options),
        index_(index),
        group_(AssignClient(index, static_cast<int>(cluster.roles.size()),
                            static_cast<int>(cluster.databases.size()),
                            static_cast<int>(cluster.coordinators.size()))),
        rng_(seed) {}

  ClientGroup group() const { return group_; }

  // Runs `op` (connecting first if need be).
  OpOutcome Run(Op op) {
    OpOutcome out;
    if (client_ == nullptr && !Connect(out)) return out;
    const TaskArrays arrays = Arrays(op);
    const absl::Time start = absl::Now();
    absl::StatusOr<cluster::QueryResult> r = Query(op, arrays);
    out.micros = absl::ToInt64Microseconds(absl::Now() - start);
    if (!r.ok()) {
      ReadError(r.status(), out);
    } else {
      ReadResult(*r, op, out);
    }
    return out;
  }

  int BackendPid() const { return client_ != nullptr ? client_->BackendPid() : 0; }
  void Disconnect() { client_.reset(); }

 private:
  // Opens the session, or says in `out` why it could not.
  bool Connect(OpOutcome& out) {
    auto c = cluster_.Connect(cluster_.coordinators[group_.coordinator],
                              absl::StrCat("stress-client-", index_),
                              cluster_.databases[group_.database], cluster_.roles[group_.role]);
    if (!c.ok()) {
      out.error = std::string(c.status().message());
      out.sqlstate = cluster::SqlState(c.status());
      out.too_many_clients = TooManyClients(out.sqlstate, out.error);
      return false;
    }
    client_ = *std::move(c);
    (void)client_->Exec(absl::StrCat("SET statement_timeout = ",
                                     absl::ToInt64Milliseconds(options_.statement_timeout)));
    return true;
  }

  TaskArrays Arrays(Op op) {
    TaskArrays arrays;
    const int key = RandomKey(rng_);
    for (WorkerTask& t : OperationTasks(options_, op, key, cluster_.workers.size(), rng_)) {
      const Endpoint& w = cluster_.workers[t.worker];
      arrays.hosts.push_back(w.host);
      arrays.ports.push_back(std::to_string(w.port));
      if (op != Op::kCopy) arrays.commands.push_back(std::move(t.sql));
    }
    return arrays;
  }

  absl::StatusOr<cluster::QueryResult> Query(Op op, const TaskArrays& arrays) {
    if (op == Op::kCopy) {
      return client_->Query(
          "SELECT count(*) FILTER (WHERE NOT success), coalesce(string_agg(error, '; '), '') "
          "FROM connthrottle.distribute('SELECT g, ''row '' || g FROM generate_series(1, 200) g',"
          " 'items', $1::text[], $2::int[])",
          {ArrayLiteral(arrays.hosts), ArrayLiteral(arrays.ports)});
    }
    return client_->Query(
        "SELECT count(*) FILTER (WHERE NOT success), "
        "coalesce(string_agg(coalesce(sqlstate, '') || ' ' || error, '; '), '') "
        "FROM connthrottle.run_tasks($1::text[], $2::int[], $3::text[])",
        {ArrayLiteral(arrays.hosts), ArrayLiteral(arrays.ports), ArrayLiteral(arrays.commands)});
  }

  // The query itself failed: the session is dropped where it is gone.
  void ReadError(const absl::Status& status, OpOutcome& out) {
    const std::string state = cluster::SqlState(status);
    std::string message(status.message());
    // The server's words only, not the driver's own query text.
    if (size_t at = message.find("\" failed: "); at != std::string::npos) {
      message = message.substr(at + 10);
    }
    out.error = absl::StrCat(state, " ", message);
    out.sqlstate = state;
    out.too_many_clients = TooManyClients(state, message);
    out.hung = state == "57014" && message.find("statement timeout") != std::string::npos;
    if (state.empty() || state == "57P01" || state.rfind("08", 0) == 0) client_.reset();
  }

  // The query ran: its tasks' (or nodes') failures and first error.
  void ReadResult(const cluster::QueryResult& r, Op op, OpOutcome& out) const {
    const std::string failed = r.rows[0][0].value_or("0");
    const std::string errors = r.rows[0][1].value_or("");
    out.too_many_clients = TooManyClients("", errors);
    out.ok = failed == "0";
    if (!out.ok) out.error = errors.substr(0, errors.find("; "));  // the first task's
    // run_tasks' errors start with their SQLSTATE (see the query).
    if (!out.ok && op != Op::kCopy) out.sqlstate = out.error.substr(0, out.error.find(' '));
    out.hung = out.micros > absl::ToInt64Microseconds(options_.statement_timeout);
  }

  const Cluster& cluster_;
  const Options& options_;
  int index_;
  ClientGroup group_;
  std::mt19937_64 rng_;
  std::unique_ptr<PgClient> client_;
};

SqlClients::SqlClients(const Cluster& cluster, const Options& options, int count, uint64_t seed,
                       const std::atomic<bool>& stop, RunData& run)
    : Clients(count),
      cluster_(cluster),
      options_(options),
      seed_(seed),
      stop_(stop),
      run_(run),
      mix_(Mix::Parse(options.mix, /*library=*/false)),
      waits_before_(WaitFigures(cluster)) {
  for (int c = 0; c < count; ++c) {
    sessions_.push_back(std::make_unique<SqlSession>(cluster, options, c, seed + c));
    tally_.figures[c].role = sessions_.back()->group().role;
    tally_.figures[c].database = sessions_.back()->group().database;
    tally_.figures[c].coordinator = sessions_.back()->group().coordinator;
  }
}

SqlClients::~SqlClients() = default;

void SqlClients::Start(absl::Time start) {
  for (int c = 0; c < count(); ++c) threads_.emplace_back([this, c, start] { Loop(c, start); });
}

// Whether client `client` is idle `at` into the run: a client of the last
// of several coordinators within --idle_from and --idle_for.
bool SqlClients::Idle(int client, absl::Duration at) const {
  return options_.idle_for > absl::ZeroDuration() &&
         sessions_[client]->group().coordinator == options_.coordinators - 1 &&
         at >= options_.idle_from && at < options_.idle_from + options_.idle_for;
}

void SqlClients::Loop(int client, absl::Time start) {
  std::mt19937_64 local(seed_ * 31 + client);
  while (!stop_.load()) {
    if (Idle(client, absl::Now() - start)) {
      // An idle client runs nothing and holds no session (nor, on the
      // direct transport, its cached connections); the workload's
      // pacing, not a synchronisation.
      sessions_[client]->Disconnect();
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    const Op op = mix_.Pick(local);
    OpOutcome o = sessions_[client]->Run(op);
    if (stop_.load() && !o.ok) break;  // interrupted by the end of the run
    Tally(client, op, o, absl::Now() - start);
  }
  sessions_[client]->Disconnect();
}

void SqlClients::Tally(int client, Op op, const OpOutcome& o, absl::Duration at) {
  ClientFigures& figures = tally_.figures[client];
  if (o.ok) {
    ++figures.completed;
    figures.completion_times.push_back(at);
    ++tally_.queries;
    tally_.progress.completed.fetch_add(1);
  } else {
    ++figures.failed;
    if (figures.failures.size() < kMaxFailuresKept) figures.failures.emplace_back(at, o.error);
    if (!o.too_many_clients && !o.hung) ++tally_.other_errors;
    std::lock_guard<std::mutex> lock(errors_mu_);
    NoteError(run_, o.error);
  }
  if (o.too_many_clients) ++tally_.too_many;
  if (o.sqlstate == "53300") ++tally_.sqlstate_53300;
  if (o.hung) ++tally_.hung;
  tally_.latencies[client].Add(o.micros);
  tally_.latencies_by_kind[client][OpName(op)].Add(o.micros);
  std::lock_guard<std::mutex> lock(tally_.progress.mu);
  tally_.progress.recent.Add(o.micros);
}

void SqlClients::Finish(RunData& run) {
  for (std::thread& t : threads_) t.join();
  AwaitSqlCountersZero(cluster_, options_.settle, run);
  const std::pair<int64_t, int64_t> waits_after = WaitFigures(cluster_);
  if (waits_before_.first >= 0 && waits_after.first >= 0) {
    run.waits = waits_after.first - waits_before_.first;
    run.wakeups = waits_after.second - waits_before_.second;
  }
  tally_.RecordIn(run);
  run.roles = cluster_.roles;
  run.databases = cluster_.databases;
}

int SqlClients::BackendPid(int client) const { return sessions_[client]->BackendPid(); }

}  // namespace connthrottle::stress
