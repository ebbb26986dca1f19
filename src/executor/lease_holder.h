// lease_holder.h — a coordinator's lease of one worker's budget (issue 28,
// docs/budget.md, "The coordinator's side"): the lease connection to the
// worker, the renewals, and the limit the lease allows now.
//
// The holder keeps one libpq connection to the worker (application_name
// 'connthrottle lease', `-c connthrottle.connection_kind=lease`), LISTENs
// on connthrottle_lease, and calls connthrottle.lease_renew there:
//   * every R = D/3; at once when the worker notifies this coordinator's
//     id; every R_min (100 ms) while demand exceeds the lease, or while it
//     is under half of it (the share goes back to those who want it);
//   * its deadline is read from the clock BEFORE the request is sent:
//     t_send + D - D/10. The worker's grant ends at t_arrival + D >= that,
//     so the coordinator stops using the lease before the worker stops
//     counting it (the margin also covers clock rates within 5%);
//   * each request acknowledges the last reply read (`acked`); a reply to
//     any request but the last sent is never read (a request is sent only
//     on a fresh connection or after the previous reply);
//   * a request unanswered for min(R, time left) replaces the connection:
//     no wait on the worker is unbounded.
// States: kProbing (no answer yet: limit cap, as without leases, or 0 when
// `required`), kLeased (limit min(cap,
// grant) until the deadline), kLapsed (deadline passed without a renewal:
// limit 0), kUnmanaged (the worker has no budget or no connthrottle:
// limit cap; asked again every minute), kUnknown (never reached: limit cap
// unless `required`, asked again every R), kVerify (the lease connection
// failed while leased: the worker may have restarted and granted nothing;
// limit 0 for new connections, those open are kept, until a reply to a
// request sent since, or the deadline). A reply from another worker
// instance (a restart) counts in `instance_changes`: what was opened under
// the old one is gone.
//
// Not thread-safe: one thread drives it (Step) and reads it (view).
// Times are CLOCK_BOOTTIME nanoseconds (LeaseHolder::Now()).

#ifndef CONNTHROTTLE_SRC_EXECUTOR_LEASE_HOLDER_H_
#define CONNTHROTTLE_SRC_EXECUTOR_LEASE_HOLDER_H_

#include <cstdint>
#include <string>

#include "connthrottle/conn_params.h"

struct pg_conn;

namespace connthrottle {

struct LeaseHolderOptions {
  std::string coordinator_id;                   // 1..63 bytes, no '/'
  uint64_t incarnation = 0;                     // 1..INT64_MAX: a new one per coordinator start
  ConnParams worker;                            // host, port, dbname, user of the lease connection
  int cap = 1;                                  // max_shared_pool_size for this worker (>= 1)
  bool required = false;                        // worker_leases = on: no lease, no connection
  int64_t renew_min_ns = 100'000'000;           // R_min
  int64_t connect_timeout_ns = 5'000'000'000;   // of the lease connection
  int64_t unmanaged_retry_ns = 60'000'000'000;  // ask an unmanaged worker again
};

enum class LeaseState { kProbing, kLeased, kVerify, kLapsed, kUnmanaged, kUnknown };
const char* LeaseStateName(LeaseState s);

struct LeaseView {
  LeaseState state = LeaseState::kProbing;
  int limit = 0;          // connections this coordinator may hold to the worker now
  int grant = 0;          // the last grant read
  int64_t deadline = 0;   // when the last grant stops being usable
  int64_t duration = 0;   // D of the last reply
  uint64_t instance = 0;  // the worker instance of the last reply
  uint64_t renewals = 0;  // replies read
  uint64_t notifications = 0;
  uint64_t instance_changes = 0;
  uint64_t reconnects = 0;
  std::string error;  // why the last attempt failed ("" when it did not)
};

class LeaseHolder {
 public:
  explicit LeaseHolder(LeaseHolderOptions options);
  LeaseHolder(const LeaseHolder&) = delete;
  LeaseHolder& operator=(const LeaseHolder&) = delete;
  ~LeaseHolder();  // closes the lease connection (the grant runs out at the worker)

  static int64_t Now();

  // What this coordinator could use now at the worker: connections busy,
  // waiting and queued (capped by `cap`), and connections open.
  void SetDemand(int demand, int open);
  // Does what is due at `now` (connect, send, read, time out) without
  // blocking. Returns when it wants to be called again at the latest.
  int64_t Step(int64_t now);
  // The lease connection's socket (-1 without one) and whether Step waits
  // for it to be writable (else readable), for the caller's poll.
  int socket() const;
  bool wants_write() const;
  LeaseView view(int64_t now) const;
  // Gives every grant back (clean shutdown), waiting at most `timeout`.
  void Release(int64_t timeout_ns);

 private:
  void Close();
  void StartConnect(int64_t now);
  void SendRenew(int64_t now, bool release);
  void ReadReplies(int64_t now);
  void Fail(int64_t now, std::string why, bool unmanaged);
  bool RenewDue(int64_t now) const;

  enum class Conn { kNone, kConnecting, kListening, kIdle, kAwaiting };
  LeaseHolderOptions options_;
  pg_conn* pg_ = nullptr;
  Conn conn_ = Conn::kNone;
  bool want_write_ = false;
  int64_t conn_started_ = 0;
  int64_t next_attempt_ = 0;  // no connect before
  LeaseView view_;
  int demand_ = 0;
  int open_ = 0;
  uint64_t seq_ = 0;
  uint64_t acked_ = 0;
  int64_t sent_at_ = 0;     // of the request awaited, or the last one
  int64_t replied_at_ = 0;  // when the last reply was read
  bool notified_ = false;
  bool others_want_more_ = false;
  bool fresh_ = false;   // a new connection: renew at once
  bool shrunk_ = false;  // the last reply shrank the grant: acknowledge it soon
  int64_t under_half_since_ = -1;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_EXECUTOR_LEASE_HOLDER_H_
