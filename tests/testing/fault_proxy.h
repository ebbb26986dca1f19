// A TCP relay on 127.0.0.1 in front of one PostgreSQL server, for the tests
// that cut a worker off from its coordinators (docs/budget.md, "How it is
// shown": a worker cut off from renewal). Clients connect to port() instead
// of the server's port; the proxy reads each client's startup packet, tells a
// lease connection (`-c connthrottle.connection_kind=lease` in libpq's
// `options`) from a data connection, forwards the packet unchanged and then
// relays bytes both ways, until the test stalls, drops or refuses
// connections of one kind or of all.
//
// What the proxy promises:
// - Every fault setter (Stall, Drop, Refuse, Resume, Heal) may be called from
//   any thread at any time, and returns once the relay thread applies it:
//   after Stall returns, no further byte moves on a matching connection;
//   after Drop returns, every matching connection is closed on both sides.
// - A stall loses nothing: bytes the proxy holds and bytes waiting in the
//   kernel's socket buffers flow again on Resume. (Bytes the proxy had already
//   handed to the kernel before the stall still arrive: a stall cuts the
//   wire, not what is on it.) A stalled connection whose peer closes is
//   noticed only on Resume.
// - A drop discards the bytes the proxy holds for that connection and closes
//   both sockets: the client and the server each read end of file (or a
//   reset, where bytes the proxy had not read were waiting), as when a
//   middlebox kills the connection. The server's backend then exits.
// - Before a connection is classified the proxy must read its startup packet:
//   it answers SSLRequest and GSSENCRequest with 'N' (no encryption) itself,
//   even while stalled, then holds the StartupMessage if the connection's
//   kind is stalled. It connects to the server only when it forwards the
//   packet; if that connect fails, it closes the client's connection.
// - stats() and WaitFor may be called from any thread. A counter changes
//   before the event it counts can be seen by a peer: once a client has read
//   bytes or seen its connection closed, the counters already show it.
//
// NOTE: the first end of file from either side ends a connection: what is
// held for the other side is written, then both sockets close. Half-closed
// connections, which the PostgreSQL protocol does not use, are not kept.
//
// The proxy owns its listening socket, every relayed socket and its relay
// thread (poll(2), non-blocking sockets, an eventfd for commands); the
// destructor stops the thread and closes them all, which clients see as
// closed connections.

#ifndef CONNTHROTTLE_TESTS_TESTING_FAULT_PROXY_H_
#define CONNTHROTTLE_TESTS_TESTING_FAULT_PROXY_H_

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace connthrottle::testing {

class FaultProxy {
 public:
  // What a connection is, from its startup packet. kOther: a CancelRequest,
  // or a packet the proxy cannot read (it is relayed all the same; the server
  // answers it).
  enum class Kind { kLease = 0, kData = 1, kOther = 2 };
  // The connections a fault applies to; kAll includes kOther.
  enum class Target { kLease, kData, kAll };

  struct KindStats {
    int64_t accepted = 0;         // startup packet read and found of this kind
    int64_t open = 0;             // of those, open now
    int64_t dropped = 0;          // of those, closed by Drop
    int64_t bytes_to_server = 0;  // relayed client -> server (startup packets included)
    int64_t bytes_to_client = 0;  // relayed server -> client (the proxy's 'N' answers not)
  };
  struct Stats {
    KindStats lease, data, other;
    int64_t accepted = 0;               // TCP connections accepted and kept
    int64_t refused = 0;                // closed at accept while Refuse(true)
    int64_t pending = 0;                // open, startup packet not read yet
    int64_t encryption_declined = 0;    // SSLRequests and GSSENCRequests answered 'N'
    int64_t server_connect_failed = 0;  // clients closed because the server was unreachable
    const KindStats& of(Kind kind) const;
  };

  // Listens on a free port of 127.0.0.1 and relays to `host`:`port` (a name or
  // address, resolved now; the server need not be up yet). InvalidArgument for
  // a port outside 1..65535 or a host that does not resolve; the errno's code
  // when the listening socket cannot be made.
  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(std::string host, int port);

  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;
  // Stops the relay thread and closes every socket.
  ~FaultProxy();

  // Where clients connect.
  const std::string& host() const { return listen_host_; }  // "127.0.0.1"
  int port() const { return listen_port_; }

  // Stops relaying on matching connections, open and new, in both directions.
  void Stall(Target target);
  // Closes matching open connections now, and each new one as soon as its
  // startup packet shows it matches (without contacting the server). Where
  // a kind is both stalled and dropped, the drop wins.
  void Drop(Target target);
  // While `refuse`, closes new connections at accept with a reset, as a
  // firewall's reject would; open ones are left alone.
  void Refuse(bool refuse);
  // Ends Stall and Drop for `target` (a stall of kAll is ended for the kinds
  // `target` names only).
  void Resume(Target target);
  // Ends every fault.
  void Heal();

  // A snapshot of the counters.
  Stats stats() const;
  // Waits until `condition` holds for the counters (evaluated under the
  // proxy's lock, so it must not call the proxy) or `timeout` passes; whether
  // it held. Wakes on every change of the counters, never polls.
  bool WaitFor(absl::FunctionRef<bool(const Stats&)> condition, absl::Duration timeout) const;

  // The kind of a complete startup packet (its length word included) that is
  // not an SSLRequest or GSSENCRequest: kLease when the effective setting of
  // connthrottle.connection_kind is "lease" (from `-c name=value`,
  // `-cname=value` or `--name=value` in `options`, split as the server splits
  // it, the last one winning, or from a startup parameter of that name, which
  // the server applies after `options`); kData for any other protocol 3.0
  // StartupMessage; kOther for a CancelRequest or a malformed packet.
  static Kind Classify(absl::string_view packet);

 private:
  struct Connection;  // one relayed client, owned by the relay thread
  struct Faults {
    std::array<bool, 3> stalled{};   // by Kind
    std::array<bool, 3> dropping{};  // by Kind
    bool refusing = false;
  };
  enum class CloseReason { kEnded, kDropped, kServerUnreachable, kStopping };

  FaultProxy(int listen_fd, int wake_fd, int listen_port, sockaddr_storage target,
             socklen_t target_length);

  // Changes the faults under the lock and waits until the relay thread has
  // read them.
  void Apply(absl::FunctionRef<void(Faults&)> change);
  void Wake();
  void Run();  // the relay thread's loop
  void AcceptAll(const Faults& faults);
  void ApplyFaults(const Faults& faults);
  void ReadStartup(Connection& c);
  void ConnectToServer(Connection& c);
  void Service(Connection& c, bool client_side, short revents);
  void Close(Connection& c, CloseReason reason);
  KindStats& KindStatsLocked(Kind kind) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string listen_host_ = "127.0.0.1";
  const int listen_fd_;
  const int wake_fd_;  // an eventfd: Wake() writes, the loop drains
  const int listen_port_;
  const sockaddr_storage target_;
  const socklen_t target_length_;

  mutable absl::Mutex mu_;
  Faults faults_ ABSL_GUARDED_BY(mu_);
  uint64_t requested_ ABSL_GUARDED_BY(mu_) = 0;  // fault changes made
  uint64_t applied_ ABSL_GUARDED_BY(mu_) = 0;    // of those, read by the loop
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;  // the loop has returned
  Stats stats_ ABSL_GUARDED_BY(mu_);

  // The relay thread's alone.
  std::vector<std::unique_ptr<Connection>> connections_;
  std::thread thread_;
};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_FAULT_PROXY_H_
