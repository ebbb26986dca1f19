// connthrottle/limit.h — how many slots a key may have, decided per call.
//
// Limits are configuration, not shared state: every acquire is given the
// limit that applies at that moment, so a configuration reload takes effect
// at the next decision. PoolLimits is the configuration as the user writes it
// (with the special values of DESIGN.md); Limit is what one decision applies.
//
//   max_shared_pool_size    -1  throttling off (slots are still counted)
//                            0  derive: max_connections of the coordinator
//                            n  at most n slots per key
//   local_shared_pool_size  -1  never connect to the local node
//                            0  half of max_client_connections (at least 1)
//                            n  at most n slots for the local node
//   max_shared_pool_size_per_database
//                           -1  off (the default): only the node's limit
//                            n  also at most n slots per (node, database)
//
// The node limit bounds every database of a node together (one worker has
// one max_connections). The per-database bound is a second, optional level
// below it: an acquire with a per-database bound takes a slot of the key's
// database counter, then one of its node counter, and holds both
// (owner.h, "Two levels"). It applies to the local node too, and not when
// throttling is off.
//
// The local node's limit applies whatever max_shared_pool_size says: turning
// remote throttling off must not let a coordinator flood itself. It bounds
// both the slots held for the local node and the number of client backends
// the caller reports as active, because connecting to oneself consumes a
// backend of the very server that is already serving those clients.
//
// Both types are plain values: copyable, thread-compatible.

#ifndef CONNTHROTTLE_LIMIT_H_
#define CONNTHROTTLE_LIMIT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace connthrottle {

inline constexpr int kThrottlingOff = -1;
inline constexpr int kDeriveFromMaxConnections = 0;
inline constexpr int kNeverConnectToSelf = -1;
inline constexpr int kHalfOfMaxClientConnections = 0;
inline constexpr int kPerDatabaseOff = -1;

// The largest limit and the largest count a key can have (PostgreSQL's own
// ceiling on max_connections is 262143).
inline constexpr int kMaxSlotsPerKey = (1 << 20) - 1;

struct PoolLimits {
  int max_shared_pool_size = kDeriveFromMaxConnections;
  int max_connections = 100;  // the coordinator's max_connections
  int local_shared_pool_size = kHalfOfMaxClientConnections;
  int max_client_connections = 100;
  int max_shared_pool_size_per_database = kPerDatabaseOff;

  // InvalidArgument naming the field when a value is below its special
  // values, above kMaxSlotsPerKey, or a max_* figure is not positive (the
  // per-database bound is -1 or positive: 0 would refuse every connection).
  absl::Status Validate() const;
};

// The decision one acquire applies: the node's limit and, optionally, the
// per-database bound below it. Cheap to copy (16 bytes).
class Limit {
 public:
  // Admits every acquire; slots are still counted.
  static constexpr Limit Unlimited() { return Limit(kUnlimited, 0, false); }
  // Admits while fewer than n slots are held. n == 0 refuses every acquire.
  static constexpr Limit AtMost(uint32_t n) { return Limit(n, 0, false); }

  // The limit for a remote node under `limits`. `limits` must be valid.
  static Limit ForRemote(const PoolLimits& limits);
  // The limit for the local node under `limits`, given how many client
  // backends are active on it now. Local acquires never wait: a waiting
  // acquire under such a limit behaves as an optional one.
  static Limit ForLocal(const PoolLimits& limits, int active_client_backends);
  // The limit for a node under `limits`: ForLocal when `local` (the node is
  // the caller's own server), ForRemote otherwise. The one place that makes
  // this choice; every caller that knows whether a node is local asks here.
  static Limit ForNode(const PoolLimits& limits, bool local, int active_client_backends);

  bool unlimited() const { return max_ == kUnlimited; }
  // The maximum number of slots (meaningless when unlimited()).
  uint32_t max() const { return max_; }
  bool never_waits() const { return never_waits_; }

  // This limit with a per-database bound of n slots (n == 0 refuses every
  // acquire). Without one, the database level is not counted at all.
  constexpr Limit WithPerDatabase(uint32_t n) const {
    Limit l = *this;
    l.database_max_ = n;
    return l;
  }
  // This limit with its node maximum lowered to at most n (a lease), keeping
  // the per-database bound and the local node's figures.
  Limit CappedAt(uint32_t n) const;
  bool per_database() const { return database_max_ != kUnlimited; }
  // The limit of the database level: at most the per-database bound, never
  // waiting when this one does not. Meaningful only when per_database().
  constexpr Limit DatabaseLevel() const { return Limit(database_max_, 0, never_waits_); }

  // Whether one more slot may be taken when `in_use` slots are held and
  // `queued` waiters are ahead of the caller.
  bool Admits(uint32_t in_use, uint32_t queued) const {
    if (max_ == kUnlimited) return true;
    return in_use < max_ && queued < max_ - in_use && external_ < max_;
  }

  std::string ToString() const;

  friend bool operator==(const Limit&, const Limit&) = default;

 private:
  static constexpr uint32_t kUnlimited = UINT32_MAX;
  constexpr Limit(uint32_t max, uint32_t external, bool never_waits)
      : max_(max), external_(external), never_waits_(never_waits) {}

  uint32_t max_;
  uint32_t external_;                   // load already on the node that counts against max_
  uint32_t database_max_ = kUnlimited;  // the per-database bound, or none
  bool never_waits_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_LIMIT_H_
