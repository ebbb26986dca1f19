#include "executor/connection.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace connthrottle {

AdaptiveExecutor::Connection::~Connection() {
  if (pg != nullptr) PQfinish(pg);
  pg = nullptr;
  // `slot` is released after this body: the connection is closed first.
}

std::string NodeAddress::ToString() const { return absl::StrCat(host, ":", port); }

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

}  // namespace connthrottle
