// fault_proxy.cc — the relay behind FaultProxy: see fault_proxy.h.
//
// One thread runs the loop. Each turn it reads the faults (under mu_), closes
// the connections a Drop names and connects those whose startup packet is
// waiting and whose kind is not stalled, then marks the faults read (the
// setters waiting for that return), builds the poll set from each connection's
// state, skipping stalled ones altogether (so a stalled socket's hang-up cannot
// wake the loop), and services what poll reports. Sockets are non-blocking;
// a write goes on until the socket takes no more, a read takes one chunk per
// report. Counters change under mu_ before the event they count is visible
// to a peer (bytes: across the send; a close: before it).
//
// A connection's life: kStartup (the client's first bytes are read, SSL and
// GSS requests answered 'N') -> kAwaitingServer (classified; the packet waits
// in to_server) -> kConnecting -> kRelaying -> kFlushing (one side ended: what
// is held for the other is written) -> closed. Every close goes through
// Close(), which keeps the counters.

#include "tests/testing/fault_proxy.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace connthrottle::testing {
namespace {

// Request codes of the frontend/backend protocol's first packet.
constexpr uint32_t kCancelRequestCode = 80877102;
constexpr uint32_t kSslRequestCode = 80877103;
constexpr uint32_t kGssEncRequestCode = 80877104;
// The server's MAX_STARTUP_PACKET_LENGTH: a longer "packet" is not one.
constexpr uint32_t kMaxStartupPacketLength = 10000;
// Bytes held per direction before the proxy stops reading that direction.
constexpr size_t kBufferLimit = 64 * 1024;

constexpr absl::string_view kKindSetting = "connthrottle.connection_kind";

uint32_t ReadUint32(absl::string_view bytes) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
}

// The arguments of a startup packet's `options`, split as the server's
// pg_split_opts splits them: at whitespace, unless escaped by a backslash,
// which is dropped.
std::vector<std::string> SplitOptions(absl::string_view options) {
  std::vector<std::string> args;
  size_t i = 0;
  for (;;) {
    while (i < options.size() && absl::ascii_isspace(static_cast<unsigned char>(options[i]))) ++i;
    if (i == options.size()) return args;
    std::string arg;
    bool escaped = false;
    for (; i < options.size(); ++i) {
      const char ch = options[i];
      if (absl::ascii_isspace(static_cast<unsigned char>(ch)) && !escaped) break;
      if (!escaped && ch == '\\') {
        escaped = true;
      } else {
        escaped = false;
        arg.push_back(ch);
      }
    }
    args.push_back(std::move(arg));
  }
}

// The last value `options` gives connthrottle.connection_kind, if any. Reads
// `-c name=value`, `-cname=value` and `--name=value`, with '-' in the name
// read as '_' (the server's ParseLongOption), as src/pg/admission.cc does.
std::optional<std::string> KindFromOptions(absl::string_view options) {
  const std::vector<std::string> args = SplitOptions(options);
  std::optional<std::string> kind;
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view setting = args[i];
    if (setting == "-c" && i + 1 < args.size()) {
      setting = args[++i];
    } else if (absl::StartsWith(setting, "-c") || absl::StartsWith(setting, "--")) {
      setting.remove_prefix(2);
    } else {
      continue;
    }
    const size_t equals = setting.find('=');
    if (equals == absl::string_view::npos) continue;
    std::string name(setting.substr(0, equals));
    std::replace(name.begin(), name.end(), '-', '_');
    if (absl::EqualsIgnoreCase(name, kKindSetting)) kind = std::string(setting.substr(equals + 1));
  }
  return kind;
}

void SetNoDelay(int fd) {
  const int on = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
}

int KindIndex(FaultProxy::Kind kind) { return static_cast<int>(kind); }

}  // namespace

struct FaultProxy::Connection {
  enum class Phase { kStartup, kAwaitingServer, kConnecting, kRelaying, kFlushing };

  int client = -1;
  int server = -1;
  Phase phase = Phase::kStartup;
  Kind kind = Kind::kOther;      // known from kAwaitingServer on
  std::string to_server;         // read from the client, not yet written to the server
  std::string to_client;         // read from the server (or the proxy's 'N'), not yet written
  size_t own_to_client = 0;      // of to_client's first bytes, the proxy's own answers
  bool flush_to_client = false;  // kFlushing: the side still written to
  bool closed = false;

  bool Classified() const { return phase != Phase::kStartup; }

  // What poll should wait for on each side (0: leave the socket out).
  short ClientEvents() const {
    short events = 0;
    switch (phase) {
      case Phase::kFlushing:  // what the side still written to sends is discarded
        return flush_to_client ? POLLOUT | POLLIN : 0;
      case Phase::kStartup:
      case Phase::kAwaitingServer:
      case Phase::kConnecting:
      case Phase::kRelaying:
        if (to_server.size() < kBufferLimit) events |= POLLIN;
        if (!to_client.empty()) events |= POLLOUT;
        return events;
    }
    return 0;
  }
  short ServerEvents() const {
    short events = 0;
    switch (phase) {
      case Phase::kStartup:
      case Phase::kAwaitingServer:
        return 0;
      case Phase::kConnecting:
        return POLLOUT;
      case Phase::kFlushing:
        return flush_to_client ? 0 : POLLOUT | POLLIN;
      case Phase::kRelaying:
        if (to_client.size() < kBufferLimit) events |= POLLIN;
        if (!to_server.empty()) events |= POLLOUT;
        return events;
    }
    return 0;
  }
};

const FaultProxy::KindStats& FaultProxy::Stats::of(Kind kind) const {
  switch (kind) {
    case Kind::kLease:
      return lease;
    case Kind::kData:
      return data;
    case Kind::kOther:
      break;
  }
  return other;
}

FaultProxy::KindStats& FaultProxy::KindStatsLocked(Kind kind) {
  switch (kind) {
    case Kind::kLease:
      return stats_.lease;
    case Kind::kData:
      return stats_.data;
    case Kind::kOther:
      break;
  }
  return stats_.other;
}

FaultProxy::Kind FaultProxy::Classify(absl::string_view packet) {
  if (packet.size() < 8 || ReadUint32(packet) != packet.size()) return Kind::kOther;
  // Protocol 3.x; a CancelRequest's code (1234 << 16 | 5678) is not.
  if (ReadUint32(packet.substr(4)) >> 16 != 3) return Kind::kOther;
  absl::string_view rest = packet.substr(8);
  std::optional<std::string> from_options;
  std::optional<std::string> from_parameter;
  for (;;) {
    size_t end = rest.find('\0');
    if (end == absl::string_view::npos) return Kind::kOther;  // no terminator
    if (end == 0) break;                                      // the list's end
    const absl::string_view name = rest.substr(0, end);
    rest.remove_prefix(end + 1);
    end = rest.find('\0');
    if (end == absl::string_view::npos) return Kind::kOther;
    const absl::string_view value = rest.substr(0, end);
    rest.remove_prefix(end + 1);
    if (name == "options") {
      if (std::optional<std::string> kind = KindFromOptions(value)) from_options = std::move(kind);
    } else if (absl::EqualsIgnoreCase(name, kKindSetting)) {
      from_parameter = std::string(value);
    }
  }
  // The server applies startup parameters after `options`.
  const std::optional<std::string>& kind = from_parameter ? from_parameter : from_options;
  return kind && absl::EqualsIgnoreCase(*kind, "lease") ? Kind::kLease : Kind::kData;
}

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(std::string host, int port) {
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("fault proxy: bad server port ", port));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault proxy: cannot resolve server host \"", host, "\": ", gai_strerror(rc)));
  }
  sockaddr_storage target{};
  const socklen_t target_length = found->ai_addrlen;
  std::memcpy(&target, found->ai_addr, found->ai_addrlen);
  freeaddrinfo(found);

  const int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) return absl::ErrnoToStatus(errno, "fault proxy: socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(listen_fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      listen(listen_fd, SOMAXCONN) != 0 ||
      getsockname(listen_fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const int error = errno;
    close(listen_fd);
    return absl::ErrnoToStatus(error, "fault proxy: listening on 127.0.0.1");
  }
  const int wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd < 0) {
    const int error = errno;
    close(listen_fd);
    return absl::ErrnoToStatus(error, "fault proxy: eventfd");
  }
  std::unique_ptr<FaultProxy> proxy(
      new FaultProxy(listen_fd, wake_fd, ntohs(address.sin_port), target, target_length));
  proxy->thread_ = std::thread([p = proxy.get()] { p->Run(); });
  return proxy;
}

FaultProxy::FaultProxy(int listen_fd, int wake_fd, int listen_port, sockaddr_storage target,
                       socklen_t target_length)
    : listen_fd_(listen_fd),
      wake_fd_(wake_fd),
      listen_port_(listen_port),
      target_(target),
      target_length_(target_length) {}

FaultProxy::~FaultProxy() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  Wake();
  thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

void FaultProxy::Stall(Target target) {
  Apply([target](Faults& f) {
    if (target != Target::kData) f.stalled[KindIndex(Kind::kLease)] = true;
    if (target != Target::kLease) f.stalled[KindIndex(Kind::kData)] = true;
    if (target == Target::kAll) f.stalled[KindIndex(Kind::kOther)] = true;
  });
}

void FaultProxy::Drop(Target target) {
  Apply([target](Faults& f) {
    if (target != Target::kData) f.dropping[KindIndex(Kind::kLease)] = true;
    if (target != Target::kLease) f.dropping[KindIndex(Kind::kData)] = true;
    if (target == Target::kAll) f.dropping[KindIndex(Kind::kOther)] = true;
  });
}

void FaultProxy::Refuse(bool refuse) {
  Apply([refuse](Faults& f) { f.refusing = refuse; });
}

void FaultProxy::Resume(Target target) {
  Apply([target](Faults& f) {
    for (Kind kind : {Kind::kLease, Kind::kData, Kind::kOther}) {
      const bool named = target == Target::kAll ||
                         (target == Target::kLease && kind == Kind::kLease) ||
                         (target == Target::kData && kind == Kind::kData);
      if (!named) continue;
      f.stalled[KindIndex(kind)] = false;
      f.dropping[KindIndex(kind)] = false;
    }
  });
}

void FaultProxy::Heal() {
  Apply([](Faults& f) { f = Faults{}; });
}

FaultProxy::Stats FaultProxy::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool FaultProxy::WaitFor(absl::FunctionRef<bool(const Stats&)> condition,
                         absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto holds = [this, &condition]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return condition(stats_); };
  return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

// Apply: the change is in force when this returns, because the loop reads
// the faults at the top of each turn and only then sets applied_.
void FaultProxy::Apply(absl::FunctionRef<void(Faults&)> change) {
  absl::MutexLock lock(&mu_);
  change(faults_);
  const uint64_t generation = ++requested_;
  Wake();
  auto read = [this, generation]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return applied_ >= generation || stopped_; };
  mu_.Await(absl::Condition(&read));
}

void FaultProxy::Wake() {
  const uint64_t one = 1;
  // EAGAIN only when the counter is full, i.e. a wake-up is pending anyway.
  (void)!write(wake_fd_, &one, sizeof(one));
}

void FaultProxy::Run() {
  struct Slot {
    Connection* connection;
    bool client_side;
  };
  std::vector<pollfd> fds;
  std::vector<Slot> slots;
  for (;;) {
    Faults faults;
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      faults = faults_;
      generation = requested_;
    }
    ApplyFaults(faults);
    {
      absl::MutexLock lock(&mu_);
      applied_ = generation;
    }

    fds.clear();
    slots.clear();
    fds.push_back(pollfd{wake_fd_, POLLIN, 0});
    fds.push_back(pollfd{listen_fd_, POLLIN, 0});
    for (const std::unique_ptr<Connection>& c : connections_) {
      if (c->Classified() && faults.stalled[KindIndex(c->kind)]) continue;
      if (const short events = c->ClientEvents(); events != 0) {
        fds.push_back(pollfd{c->client, events, 0});
        slots.push_back(Slot{c.get(), true});
      }
      if (const short events = c->ServerEvents(); events != 0) {
        fds.push_back(pollfd{c->server, events, 0});
        slots.push_back(Slot{c.get(), false});
      }
    }
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "fault proxy: poll: %s; relaying stops\n", std::strerror(errno));
      break;
    }
    if (fds[0].revents != 0) {
      uint64_t count;
      (void)!read(wake_fd_, &count, sizeof(count));
    }
    if (fds[1].revents != 0) AcceptAll(faults);
    for (size_t i = 2; i < fds.size(); ++i) {
      const Slot& slot = slots[i - 2];
      if (fds[i].revents == 0 || slot.connection->closed) continue;
      Service(*slot.connection, slot.client_side, fds[i].revents);
    }
    std::erase_if(connections_, [](const std::unique_ptr<Connection>& c) { return c->closed; });
  }
  for (const std::unique_ptr<Connection>& c : connections_) Close(*c, CloseReason::kStopping);
  connections_.clear();
  absl::MutexLock lock(&mu_);
  stopped_ = true;
}

// AcceptAll: takes every waiting connection; under Refuse, each is reset at
// once (SO_LINGER 0: the client reads ECONNRESET, as from a reject rule).
void FaultProxy::AcceptAll(const Faults& faults) {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN: none left (or a resource error, retried next turn)
    }
    if (faults.refusing) {
      const linger reset{.l_onoff = 1, .l_linger = 0};
      (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
      {
        absl::MutexLock lock(&mu_);
        ++stats_.refused;
      }
      close(fd);
      continue;
    }
    SetNoDelay(fd);
    auto c = std::make_unique<Connection>();
    c->client = fd;
    connections_.push_back(std::move(c));
    absl::MutexLock lock(&mu_);
    ++stats_.accepted;
    ++stats_.pending;
  }
}

// ApplyFaults: drops before anything else, so a dropped connection's packet
// never reaches the server; then connects each classified, unstalled
// connection that waits for its server.
void FaultProxy::ApplyFaults(const Faults& faults) {
  for (const std::unique_ptr<Connection>& c : connections_) {
    if (c->closed || !c->Classified()) continue;
    const int kind = KindIndex(c->kind);
    if (faults.dropping[kind]) {
      Close(*c, CloseReason::kDropped);
    } else if (!faults.stalled[kind] && c->phase == Connection::Phase::kAwaitingServer) {
      ConnectToServer(*c);
    }
  }
  std::erase_if(connections_, [](const std::unique_ptr<Connection>& c) { return c->closed; });
}

// ReadStartup: what the client sent so far, before its kind is known.
// Answers encryption requests; classifies once a whole packet is in. A length
// word the server would reject makes the connection kOther: relayed as is.
void FaultProxy::ReadStartup(Connection& c) {
  Kind kind = Kind::kOther;
  for (;;) {
    if (c.to_server.size() < 4) return;
    const uint32_t length = ReadUint32(c.to_server);
    if (length < 8 || length > kMaxStartupPacketLength) break;
    if (c.to_server.size() < length) return;
    const uint32_t code = ReadUint32(absl::string_view(c.to_server).substr(4));
    if (length == 8 && (code == kSslRequestCode || code == kGssEncRequestCode)) {
      c.to_server.erase(0, 8);
      c.to_client.push_back('N');
      ++c.own_to_client;
      absl::MutexLock lock(&mu_);
      ++stats_.encryption_declined;
      continue;
    }
    kind = code == kCancelRequestCode ? Kind::kOther
                                      : Classify(absl::string_view(c.to_server).substr(0, length));
    break;
  }
  c.kind = kind;
  c.phase = Connection::Phase::kAwaitingServer;
  absl::MutexLock lock(&mu_);
  --stats_.pending;
  ++KindStatsLocked(kind).accepted;
  ++KindStatsLocked(kind).open;
}

void FaultProxy::ConnectToServer(Connection& c) {
  const int fd = socket(target_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    Close(c, CloseReason::kServerUnreachable);
    return;
  }
  c.server = fd;
  SetNoDelay(fd);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&target_), target_length_) == 0) {
    c.phase = Connection::Phase::kRelaying;
  } else if (errno == EINPROGRESS) {
    c.phase = Connection::Phase::kConnecting;
  } else {
    Close(c, CloseReason::kServerUnreachable);
  }
}

// Service: one side's readiness. Writes before reading, so that what is held
// drains before more is taken; an error or a hang-up shows as a failed read or
// write, which ends the connection.
void FaultProxy::Service(Connection& c, bool client_side, short revents) {
  const int fd = client_side ? c.client : c.server;
  const bool readable = (revents & (POLLIN | POLLHUP | POLLERR)) != 0;
  const bool writable = (revents & (POLLOUT | POLLHUP | POLLERR)) != 0;

  if (!client_side && c.phase == Connection::Phase::kConnecting) {
    if (!writable) return;
    int error = 0;
    socklen_t length = sizeof(error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 || error != 0) {
      Close(c, CloseReason::kServerUnreachable);
    } else {
      c.phase = Connection::Phase::kRelaying;
    }
    return;
  }

  const short wanted = client_side ? c.ClientEvents() : c.ServerEvents();
  if ((wanted & POLLOUT) != 0 && writable) {
    std::string& out = client_side ? c.to_client : c.to_server;
    while (!out.empty()) {
      bool failed = false;
      {
        // Counted under the lock held across the (non-blocking) send, so
        // that no peer sees bytes the counters do not show yet.
        absl::MutexLock lock(&mu_);
        const ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
          failed = true;
        } else {
          int64_t relayed = n;
          if (client_side) {
            const size_t own = std::min(c.own_to_client, static_cast<size_t>(n));
            c.own_to_client -= own;
            relayed -= static_cast<int64_t>(own);
          }
          out.erase(0, static_cast<size_t>(n));
          KindStats& stats = KindStatsLocked(c.kind);
          (client_side ? stats.bytes_to_client : stats.bytes_to_server) += relayed;
        }
      }
      if (failed) {
        Close(c, CloseReason::kEnded);
        return;
      }
    }
    if (c.phase == Connection::Phase::kFlushing && out.empty()) {
      Close(c, CloseReason::kEnded);
      return;
    }
  }

  if ((wanted & POLLIN) != 0 && readable) {
    char chunk[16 * 1024];
    ssize_t n;
    do {
      n = recv(fd, chunk, sizeof(chunk), 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0) {
      Close(c, CloseReason::kEnded);
      return;
    }
    if (c.phase == Connection::Phase::kFlushing) {
      // Read only so that a peer blocked writing to us cannot keep itself
      // from reading what we write; its end ends the connection.
      if (n == 0) Close(c, CloseReason::kEnded);
      return;
    }
    if (n > 0) {
      (client_side ? c.to_server : c.to_client).append(chunk, static_cast<size_t>(n));
      if (client_side && c.phase == Connection::Phase::kStartup) ReadStartup(c);
      return;
    }
    // End of file from this side: write what is held for the other side (if
    // it is connected), then close both.
    const std::string& rest = client_side ? c.to_server : c.to_client;
    if (rest.empty() || c.phase != Connection::Phase::kRelaying) {
      Close(c, CloseReason::kEnded);
      return;
    }
    c.phase = Connection::Phase::kFlushing;
    c.flush_to_client = !client_side;
  }
}

// Close: the one way a connection ends; keeps the counters.
void FaultProxy::Close(Connection& c, CloseReason reason) {
  if (c.closed) return;
  c.closed = true;
  {
    // Counted before the sockets close: no peer sees a close the counters do
    // not show yet.
    absl::MutexLock lock(&mu_);
    if (!c.Classified()) {
      --stats_.pending;
    } else {
      KindStats& stats = KindStatsLocked(c.kind);
      --stats.open;
      if (reason == CloseReason::kDropped) ++stats.dropped;
    }
    if (reason == CloseReason::kServerUnreachable) ++stats_.server_connect_failed;
  }
  if (c.client >= 0) close(c.client);
  if (c.server >= 0) close(c.server);
  c.client = c.server = -1;
  c.to_server.clear();
  c.to_client.clear();
}

}  // namespace connthrottle::testing
