// lease_holder.cc — a coordinator's lease of one worker's budget: see
// lease_holder.h and docs/budget.md.

#include "executor/lease_holder.h"

#include <libpq-fe.h>
#include <poll.h>
#include <time.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/lease_table.h"

namespace connthrottle {
namespace {

constexpr char kRenewSql[] =
    "SELECT worker_instance, reply_seq, granted, duration_ms, others_want_more, budget_off "
    "FROM connthrottle.lease_renew($1, $2, $3, $4, $5, $6, $7, $8, $9)";
constexpr int64_t kSecond = 1'000'000'000;

std::string Trim(const char* s) {
  std::string out = s == nullptr ? "" : s;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// SQLSTATEs that mean the worker keeps no budget for us to lease: no
// connthrottle there (function or schema missing), or not preloaded.
bool MeansUnmanaged(const char* sqlstate) {
  if (sqlstate == nullptr) return false;
  const std::string s = sqlstate;
  return s == "42883" || s == "3F000" || s == "55000";
}

}  // namespace

const char* LeaseStateName(LeaseState s) {
  switch (s) {
    case LeaseState::kProbing:
      return "probing";
    case LeaseState::kLeased:
      return "leased";
    case LeaseState::kVerify:
      return "verify";
    case LeaseState::kLapsed:
      return "lapsed";
    case LeaseState::kUnmanaged:
      return "unmanaged";
    case LeaseState::kUnknown:
      return "unknown";
  }
  return "?";
}

int64_t LeaseHolder::Now() { return BootClockNanos(); }

LeaseHolder::LeaseHolder(LeaseHolderOptions options) : options_(std::move(options)) {
  // Sequence numbers grow across holders of one incarnation too (a
  // communicator restarted, a node leased again): the worker refuses any
  // request not newer than the last it saw. The boot clock in nanoseconds
  // grows faster than any holder sends.
  seq_ = static_cast<uint64_t>(Now());
  options_.worker.Set("application_name", "connthrottle lease");
  options_.worker.Set("options", "-c connthrottle.connection_kind=lease");
  options_.worker.Set("connect_timeout",
                      absl::StrCat(std::max<int64_t>(1, options_.connect_timeout_ns / kSecond)));
}

LeaseHolder::~LeaseHolder() { Close(); }

void LeaseHolder::SetDemand(int demand, int open) {
  demand_ = std::clamp(demand, 0, options_.cap);
  open_ = std::max(open, 0);
}

void LeaseHolder::Close() {
  if (pg_ != nullptr) PQfinish(pg_);
  pg_ = nullptr;
  conn_ = Conn::kNone;
  want_write_ = false;
}

int LeaseHolder::socket() const { return pg_ != nullptr ? PQsocket(pg_) : -1; }
bool LeaseHolder::wants_write() const { return want_write_; }

void LeaseHolder::StartConnect(int64_t now) {
  pg_ = PQconnectStartParams(options_.worker.keywords(), options_.worker.values(), 0);
  conn_started_ = now;
  if (pg_ == nullptr || PQstatus(pg_) == CONNECTION_BAD) {
    Fail(now, pg_ == nullptr ? "out of memory" : Trim(PQerrorMessage(pg_)), false);
    return;
  }
  // A worker's notices and errors on an idle connection would be printed on
  // stderr (a coordinator backend's server log); the state says what matters.
  PQsetNoticeProcessor(
      pg_, [](void*, const char*) {}, nullptr);
  conn_ = Conn::kConnecting;
  want_write_ = true;
}

void LeaseHolder::Fail(int64_t now, std::string why, bool unmanaged) {
  const bool had_connection = conn_ != Conn::kNone && conn_ != Conn::kConnecting;
  Close();
  view_.error = std::move(why);
  if (had_connection) ++view_.reconnects;
  if (unmanaged) {
    view_.state = LeaseState::kUnmanaged;
    next_attempt_ = now + options_.unmanaged_retry_ns;
    return;
  }
  if (view_.state == LeaseState::kProbing) view_.state = LeaseState::kUnknown;
  // A worker that restarted has no grant for us: open nothing new under
  // the old one until a reply on the next connection says what it is.
  if (had_connection && view_.state == LeaseState::kLeased) view_.state = LeaseState::kVerify;
  // Try again within a renewal period (1 s before the first reply).
  const int64_t period = view_.duration > 0 ? view_.duration / 3 : kSecond;
  next_attempt_ = now + std::min(period, kSecond);
}

bool LeaseHolder::RenewDue(int64_t now) const {
  if (fresh_) return true;
  if (view_.state == LeaseState::kUnmanaged) return now >= sent_at_ + options_.unmanaged_retry_ns;
  if (view_.state != LeaseState::kLeased) return true;  // verify, lapsed, probing, unknown
  if (notified_ || now >= sent_at_ + view_.duration / 3) return true;
  if (now < sent_at_ + options_.renew_min_ns) return false;
  // Early: to grow while the worker may have more, or to give back what
  // others want.
  if (demand_ > view_.grant && view_.grant < options_.cap) return true;
  // A smaller grant counts at the worker beside the larger one until a
  // request acknowledges it.
  if (shrunk_) return true;
  return others_want_more_ && demand_ * 2 < view_.grant && view_.grant > std::max(1, demand_);
}

void LeaseHolder::SendRenew(int64_t now, bool release) {
  const std::string args[9] = {
      options_.coordinator_id,      absl::StrCat(options_.incarnation),
      absl::StrCat(view_.instance), absl::StrCat(++seq_),
      absl::StrCat(acked_),         absl::StrCat(open_),
      absl::StrCat(demand_),        absl::StrCat(options_.cap),
      release ? "true" : "false",
  };
  const char* values[9];
  for (int i = 0; i < 9; ++i) values[i] = args[i].c_str();
  // The deadline counts from before the request leaves: the worker's grant
  // starts later, when it arrives.
  sent_at_ = now;
  if (PQsendQueryParams(pg_, kRenewSql, 9, nullptr, values, nullptr, nullptr, 0) == 0) {
    Fail(now, Trim(PQerrorMessage(pg_)), false);
    return;
  }
  conn_ = Conn::kAwaiting;
  want_write_ = PQflush(pg_) == 1;
  notified_ = false;
  fresh_ = false;
  shrunk_ = false;
}

void LeaseHolder::ReadReplies(int64_t now) {
  if (want_write_) {
    const int f = PQflush(pg_);
    if (f < 0) return Fail(now, Trim(PQerrorMessage(pg_)), false);
    want_write_ = f == 1;
  }
  if (PQconsumeInput(pg_) == 0) return Fail(now, Trim(PQerrorMessage(pg_)), false);
  while (PGnotify* n = PQnotifies(pg_)) {
    if (options_.coordinator_id == n->extra) {
      notified_ = true;
      ++view_.notifications;
    }
    PQfreemem(n);
  }
  while (pg_ != nullptr && PQisBusy(pg_) == 0) {
    PGresult* res = PQgetResult(pg_);
    if (res == nullptr) {  // the statement is done
      conn_ = Conn::kIdle;
      return;
    }
    const ExecStatusType status = PQresultStatus(res);
    if (status == PGRES_FATAL_ERROR) {
      const char* sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      std::string why = Trim(PQresultErrorMessage(res));
      const bool unmanaged = conn_ == Conn::kAwaiting && MeansUnmanaged(sqlstate);
      PQclear(res);
      return Fail(now, std::move(why), unmanaged);
    }
    if (conn_ == Conn::kAwaiting && status == PGRES_TUPLES_OK && PQntuples(res) == 1) {
      const uint64_t instance = strtoull(PQgetvalue(res, 0, 0), nullptr, 10);
      const int grant = atoi(PQgetvalue(res, 0, 2));
      const int64_t duration = static_cast<int64_t>(atoi(PQgetvalue(res, 0, 3))) * 1'000'000;
      others_want_more_ = PQgetvalue(res, 0, 4)[0] == 't';
      const bool budget_off = PQgetvalue(res, 0, 5)[0] == 't';
      if (view_.instance != 0 && instance != view_.instance) ++view_.instance_changes;
      view_.instance = instance;
      shrunk_ = view_.state == LeaseState::kLeased && grant < view_.grant;
      view_.grant = grant;
      view_.duration = duration;
      ++view_.renewals;
      view_.error.clear();
      acked_ = seq_;
      if (budget_off) {
        view_.state = LeaseState::kUnmanaged;
        view_.deadline = 0;
      } else {
        view_.state = LeaseState::kLeased;
        view_.deadline = sent_at_ + duration - duration / 10;
      }
    }
    PQclear(res);
  }
}

int64_t LeaseHolder::Step(int64_t now) {
  if (conn_ == Conn::kNone && now >= next_attempt_) StartConnect(now);
  if (conn_ == Conn::kConnecting) {
    const PostgresPollingStatusType poll = PQconnectPoll(pg_);
    if (poll == PGRES_POLLING_OK) {
      if (PQsetnonblocking(pg_, 1) != 0 || PQsendQuery(pg_, "LISTEN connthrottle_lease") == 0) {
        Fail(now, Trim(PQerrorMessage(pg_)), false);
      } else {
        conn_ = Conn::kListening;
        sent_at_ = now;  // LISTEN's answer is timed like a request's
        want_write_ = PQflush(pg_) == 1;
        fresh_ = true;  // sequence numbers go on: the worker refuses any it has seen
      }
    } else if (poll == PGRES_POLLING_FAILED) {
      Fail(now, Trim(PQerrorMessage(pg_)), false);
    } else {
      want_write_ = poll == PGRES_POLLING_WRITING;
      if (now - conn_started_ > options_.connect_timeout_ns) {
        Fail(now, "timeout expired while connecting for a lease", false);
      }
    }
  }
  if (conn_ == Conn::kListening || conn_ == Conn::kAwaiting || conn_ == Conn::kIdle) {
    ReadReplies(now);
  }
  if (conn_ == Conn::kIdle && RenewDue(now)) SendRenew(now, false);
  // A reply not come within the renewal period, or before the lease ends:
  // the connection is replaced.
  int64_t reply_timeout = INT64_MAX;
  if (conn_ == Conn::kAwaiting || conn_ == Conn::kListening) {
    const int64_t period = view_.duration > 0 ? view_.duration / 3 : kSecond;
    reply_timeout = sent_at_ + period;
    if (view_.state == LeaseState::kLeased || view_.state == LeaseState::kVerify) {
      reply_timeout = std::min(reply_timeout, view_.deadline);
    }
    if (now >= reply_timeout) {
      Fail(now, "the worker did not answer a lease request in time", false);
      reply_timeout = INT64_MAX;
    }
  }
  if ((view_.state == LeaseState::kLeased || view_.state == LeaseState::kVerify) &&
      now >= view_.deadline) {
    view_.state = LeaseState::kLapsed;
  }

  int64_t next = now + options_.renew_min_ns;
  if (conn_ == Conn::kNone) next = std::min(next, std::max(next_attempt_, now));
  if (conn_ == Conn::kConnecting)
    next = std::min(next, conn_started_ + options_.connect_timeout_ns);
  next = std::min(next, reply_timeout);
  if (view_.state == LeaseState::kLeased || view_.state == LeaseState::kVerify) {
    next = std::min(next, view_.deadline);
  }
  return next;
}

LeaseView LeaseHolder::view(int64_t now) const {
  LeaseView v = view_;
  switch (v.state) {
    case LeaseState::kLeased:
      if (now < v.deadline) {
        v.limit = std::min(options_.cap, v.grant);
      } else {
        v.state = LeaseState::kLapsed;
        v.limit = 0;
      }
      break;
    case LeaseState::kVerify:
      v.limit = 0;
      if (now >= v.deadline) v.state = LeaseState::kLapsed;
      break;
    case LeaseState::kProbing:
      v.limit = options_.required ? 0 : options_.cap;
      break;
    case LeaseState::kLapsed:
      v.limit = 0;
      break;
    case LeaseState::kUnmanaged:
      v.limit = options_.cap;
      break;
    case LeaseState::kUnknown:
      v.limit = options_.required ? 0 : options_.cap;
      break;
  }
  return v;
}

void LeaseHolder::Release(int64_t timeout_ns) {
  const int64_t end = Now() + timeout_ns;
  // Not connected yet: nothing to send on; the grants run out by themselves.
  if (conn_ == Conn::kConnecting) Close();
  // Let a request in flight finish first; then send the release.
  bool sent = false;
  while (pg_ != nullptr && Now() < end) {
    const int64_t now = Now();
    ReadReplies(now);
    if (pg_ == nullptr) break;
    if (conn_ == Conn::kIdle) {
      if (sent) break;
      SendRenew(now, true);
      sent = true;
      continue;
    }
    pollfd p{socket(), static_cast<short>(want_write_ ? POLLOUT : POLLIN), 0};
    poll(&p, 1, static_cast<int>(std::max<int64_t>(1, (end - now) / 1'000'000)));
  }
  Close();
  view_.state = LeaseState::kProbing;
  view_.grant = 0;
}

}  // namespace connthrottle
