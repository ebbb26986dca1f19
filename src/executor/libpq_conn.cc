#include "executor/libpq_conn.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace connthrottle {

AdaptiveExecutor::Connection::~Connection() {
  if (pg != nullptr) PQfinish(pg);
  pg = nullptr;
  // `slot` is released after this body: the connection is closed first.
}

std::string NodeAddress::ToString() const { return absl::StrCat(host, ":", port); }

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool IdleConnectionIsDead(PGconn* pg) {
  if (PQstatus(pg) != CONNECTION_OK) return true;
  pollfd p{PQsocket(pg), POLLIN, 0};
  if (p.fd < 0) return true;
  return poll(&p, 1, 0) != 0;
}

std::optional<std::string> StartConnecting(AdaptiveExecutor::Connection& c,
                                           const ConnParams& params, absl::Time now) {
  using State = AdaptiveExecutor::Connection::State;
  c.connect_started = now;
  c.pg = PQconnectStartParams(params.keywords(), params.values(), /*expand_dbname=*/0);
  if (c.pg == nullptr || PQstatus(c.pg) == CONNECTION_BAD) {
    c.state = State::kBroken;
    return c.pg != nullptr ? Trim(PQerrorMessage(c.pg)) : "out of memory";
  }
  QuietNotices(c.pg);
  // The server's refusal then carries its SQLSTATE (ReadConnectError);
  // back to the default once connected.
  PQsetErrorVerbosity(c.pg, PQERRORS_VERBOSE);
  c.state = State::kConnecting;
  c.poll = PGRES_POLLING_WRITING;
  return std::nullopt;
}

ConnectProgress ContinueConnecting(AdaptiveExecutor::Connection& c, absl::Time now) {
  c.poll = PQconnectPoll(c.pg);
  if (c.poll == PGRES_POLLING_FAILED) return ConnectProgress::kFailed;
  if (c.poll != PGRES_POLLING_OK) return ConnectProgress::kPending;
  PQsetnonblocking(c.pg, 1);
  PQsetErrorVerbosity(c.pg, PQERRORS_DEFAULT);
  c.state = AdaptiveExecutor::Connection::State::kIdle;
  c.ready = now;
  return ConnectProgress::kReady;
}

// A verbose message reads "...FATAL:  53300: text\nDETAIL: ...\nLOCATION:
// ...": the code after the severity is taken out, and the LOCATION line
// dropped, which leaves the default message.
ConnectError ReadConnectError(PGconn* pg) {
  return ParseConnectError(pg != nullptr ? PQerrorMessage(pg) : "out of memory");
}

namespace {

bool IsSqlState(std::string_view s) {
  return s.size() == 5 && std::all_of(s.begin(), s.end(), [](char ch) {
           return (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z');
         });
}

// A verbose message's location line, "LOCATION:  function, file.c:123" (the
// label in the client's language).
bool IsLocationLine(std::string_view line) {
  const size_t label = line.find(":  ");
  if (label == std::string_view::npos) return false;
  const std::string_view rest = line.substr(label + 3);
  const size_t comma = rest.find(", ");
  const size_t colon = rest.rfind(':');
  if (comma == std::string_view::npos || colon == std::string_view::npos || colon < comma ||
      colon + 1 == rest.size() || rest.substr(comma + 2).find(' ') != std::string_view::npos) {
    return false;
  }
  const std::string_view line_number = rest.substr(colon + 1);
  return std::all_of(line_number.begin(), line_number.end(),
                     [](char ch) { return ch >= '0' && ch <= '9'; });
}

}  // namespace

// libpq writes each server error as "SEVERITY:  CODE: text" when verbose,
// one per attempt it made (another address, SSL then not): every code is
// taken out, the last one kept, whatever the (translated) severity word;
// the location lines are dropped. What is left is the default message.
ConnectError ParseConnectError(std::string text) {
  ConnectError e;
  for (size_t from = 0;;) {
    const size_t at = text.find(":  ", from);
    if (at == std::string::npos) break;
    const size_t code = at + 3;
    if (code + 7 <= text.size() && text.compare(code + 5, 2, ": ") == 0 &&
        IsSqlState(std::string_view(text).substr(code, 5))) {
      e.sqlstate = text.substr(code, 5);
      text.erase(code, 7);
    }
    from = code;
  }
  std::string message;
  for (std::string_view rest = text; !rest.empty();) {
    const size_t end = rest.find('\n');
    const std::string_view line = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
    if (IsLocationLine(line)) continue;
    message.append(line);
    if (end != std::string_view::npos) message += '\n';
  }
  e.message = Trim(std::move(message));
  return e;
}

absl::Duration NoSlotBackoff(absl::Duration previous, absl::Duration slow_start) {
  return std::min(std::max(2 * previous, slow_start),
                  std::max(absl::Milliseconds(500), slow_start));
}

std::string ConnectTimedOut(absl::Duration timeout) {
  return absl::StrCat("timed out after ", absl::FormatDuration(timeout),
                      " (node_connection_timeout)");
}

absl::Status CouldNotConnect(const NodeAddress& node, const std::string& why) {
  return absl::UnavailableError(
      absl::StrCat("could not connect to node ", node.ToString(), ": ", why));
}

short AwaitedEvents(const AdaptiveExecutor::Connection& c) {
  using State = AdaptiveExecutor::Connection::State;
  if (c.state == State::kConnecting) return c.poll == PGRES_POLLING_READING ? POLLIN : POLLOUT;
  if (c.state == State::kBusy) return POLLIN | (c.want_write ? POLLOUT : 0);
  return 0;
}

bool FlushWhenWritable(AdaptiveExecutor::Connection& c, short revents) {
  if (!c.want_write || !(revents & POLLOUT)) return true;
  const int flushed = PQflush(c.pg);
  if (flushed < 0) return false;
  c.want_write = flushed == 1;
  return true;
}

bool ResultsReadable(short revents) { return (revents & (POLLIN | POLLERR | POLLHUP)) != 0; }

void SendCancel(PGconn* pg) {
  if (PGcancel* cancel = PQgetCancel(pg)) {
    char error[256];
    PQcancel(cancel, error, sizeof(error));
    PQfreeCancel(cancel);
  }
}

void StopCopy(PGconn* pg, ExecStatusType copy) {
  if (copy == PGRES_COPY_IN) {
    PQputCopyEnd(pg, "COPY FROM STDIN is not supported in connthrottle tasks");
    PQflush(pg);
  } else {
    SendCancel(pg);
  }
}

absl::Status CopyRefused(const NodeAddress& node, ExecStatusType copy) {
  const char* what = copy == PGRES_COPY_IN    ? "COPY FROM STDIN"
                     : copy == PGRES_COPY_OUT ? "COPY TO STDOUT"
                                              : "COPY BOTH (replication)";
  return absl::UnimplementedError(absl::StrCat("node ", node.ToString(), ": ", what,
                                               " is not supported in tasks; the connection "
                                               "was closed"));
}

Fold FoldResult(const PGresult* res, const NodeAddress& node, int64_t max_rows_kept,
                bool& in_result_set, TaskResult& r) {
  switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_SINGLE_TUPLE: {
      // A result set comes whole (TUPLES_OK), or in single-row mode as one
      // SINGLE_TUPLE per row and an empty TUPLES_OK at its end. The task's
      // last result set is the one reported.
      if (!in_result_set) {
        r.columns.clear();
        r.rows.clear();
        r.row_count = 0;
        for (int col = 0; col < PQnfields(res); ++col) r.columns.push_back(PQfname(res, col));
      }
      const bool last = PQresultStatus(res) == PGRES_TUPLES_OK;
      in_result_set = !last;
      for (int row = 0; row < PQntuples(res); ++row) {
        ++r.row_count;
        if (max_rows_kept >= 0 && static_cast<int64_t>(r.rows.size()) >= max_rows_kept) continue;
        std::vector<std::optional<std::string>> values;
        for (int col = 0; col < PQnfields(res); ++col) {
          if (PQgetisnull(res, row, col)) {
            values.push_back(std::nullopt);
          } else {
            values.emplace_back(std::string(PQgetvalue(res, row, col), PQgetlength(res, row, col)));
          }
        }
        r.rows.push_back(std::move(values));
      }
      if (last) r.command_tag = PQcmdStatus(const_cast<PGresult*>(res));
      return Fold::kData;
    }
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
      r.command_tag = PQcmdStatus(const_cast<PGresult*>(res));
      return Fold::kData;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
      return Fold::kCopy;
    default: {
      const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      if (r.status.ok()) {
        r.sqlstate = state != nullptr ? state : "";
        r.status = absl::UnknownError(
            absl::StrCat("node ", node.ToString(), ": ", Trim(PQresultErrorMessage(res))));
      }
      return Fold::kData;
    }
  }
}

void QuietNotices(PGconn* pg) {
  PQsetNoticeProcessor(
      pg, [](void*, const char*) {}, nullptr);
}

void CloseAll(std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> connections,
              absl::Duration wait) {
  std::vector<pollfd> watch;
  for (auto& c : connections) {
    if (c->pg == nullptr) continue;
    // Any connection with a socket may have a worker backend behind it, even
    // one still authenticating: watch them all.
    const int fd = PQsocket(c->pg);
    const int copy = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    PQfinish(c->pg);  // sends Terminate on an established connection, closes libpq's fd
    c->pg = nullptr;
    if (copy >= 0) {
      // The duplicate keeps the socket open: end our side explicitly, so that
      // a backend still waiting for a startup or password packet sees EOF.
      shutdown(copy, SHUT_WR);
      watch.push_back({copy, POLLIN, 0});
    }
  }
  const absl::Time deadline = absl::Now() + wait;
  size_t open = watch.size();
  char buf[512];
  while (open > 0) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    int ready =
        poll(watch.data(), watch.size(), static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno != EINTR) break;
    for (pollfd& p : watch) {
      if (p.fd < 0 || p.revents == 0) continue;
      ssize_t n = recv(p.fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) continue;
      close(p.fd);  // EOF or error: the worker backend has exited
      p.fd = -1;
      --open;
    }
  }
  for (pollfd& p : watch) {
    if (p.fd >= 0) close(p.fd);
  }
  connections.clear();  // releases the slots
}

TaskResult RunHandedBack(ExecutionContext& context, const Task& task, absl::Time submitted) {
  const absl::Time began = absl::Now();
  TaskResult r = context.RunLocally(task);
  r.node = task.node;
  r.ran_locally = true;
  r.queued = began - submitted;
  r.run = absl::Now() - began;
  return r;
}

}  // namespace connthrottle
