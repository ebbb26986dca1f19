// connthrottle/node_key.h — a worker node and a database on it.
//
// A NodeKey names one worker endpoint and one database on it: (host, port,
// database id). The shared counters are kept per *node* (host, port): a
// worker has one max_connections whichever database a connection is to, so
// keys that differ only in their database share one counter and one limit.
// The database still tells connections apart (pools, reservations), and with
// the optional per-database bound (limit.h) it names a second counter, below
// the node's: CounterLevel says which of the two an operation means. Keys are
// validated once, when they are made, and carry their hashes so that the hot
// path of the counter table never re-validates or re-hashes them.
//
// Keys are ordered by host, then port, then database. That order is the
// *global order* in which reservations are taken (see reservation_ledger.h):
// two sessions that each take slots in this order can never each hold what
// the other waits for.
//
// NodeKey is a value type: copyable, movable, thread-compatible.

#ifndef CONNTHROTTLE_NODE_KEY_H_
#define CONNTHROTTLE_NODE_KEY_H_

#include <compare>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace connthrottle {

// Which counter of a key: its node's (every database of the node together),
// or its database's on that node (the optional per-database bound).
enum class CounterLevel : uint8_t { kNode, kDatabase };

class NodeKey {
 public:
  // Host names longer than this are refused (PostgreSQL's and DNS's limit).
  static constexpr size_t kMaxHostLength = 255;

  // Returns a validated key, or InvalidArgument naming the bad value when the
  // host is empty, longer than kMaxHostLength bytes or contains a NUL byte, or
  // when the port is outside 1..65535.
  static absl::StatusOr<NodeKey> Create(std::string_view host, int port, uint32_t database);

  std::string_view host() const { return std::string_view(padded_host_.data(), host_len_); }
  int port() const { return port_; }
  uint32_t database() const { return database_; }

  // A 64-bit hash of (host, port, database), the same in every process.
  uint64_t hash() const { return hash_; }
  // A 64-bit hash of the node (host, port) alone. It places the node's
  // counter in the shared table, so it is the same in every process and
  // every build of one table layout version (unlike absl::Hash, which is
  // seeded per process).
  uint64_t node_hash() const { return node_hash_; }
  // Whether both keys name the same node (host, port), whatever database.
  bool SameNode(const NodeKey& other) const {
    return node_hash_ == other.node_hash_ && port_ == other.port_ &&
           padded_host_ == other.padded_host_;
  }

  // "host:port/database", for messages.
  std::string ToString() const;
  // "host:port": the node, whose counter every database of it shares.
  std::string NodeName() const;

  friend bool operator==(const NodeKey& a, const NodeKey& b) {
    return a.hash_ == b.hash_ && a.port_ == b.port_ && a.database_ == b.database_ &&
           a.padded_host_ == b.padded_host_;
  }
  // The global order: host (bytewise), then port, then database.
  friend std::strong_ordering operator<=>(const NodeKey& a, const NodeKey& b);

  template <typename H>
  friend H AbslHashValue(H h, const NodeKey& k) {
    return H::combine(std::move(h), k.hash_);
  }

 private:
  friend class CounterTable;
  friend class Owner;
  friend class OwnerOps;
  friend struct CounterKey;
  NodeKey(std::string_view host, uint16_t port, uint32_t database);

  // How the shared table stores and compares a counter: the host as
  // zero-padded 64-bit words, and (port, host length) packed in one word; a
  // database counter adds the flag kDatabaseMeta and the database id.
  static constexpr uint64_t kDatabaseMeta = uint64_t{1} << 31;
  uint64_t counter_hash(CounterLevel level) const {
    return level == CounterLevel::kNode ? node_hash_ : hash_;
  }
  uint64_t counter_meta(CounterLevel level) const {
    return level == CounterLevel::kNode ? node_meta()
                                        : node_meta() | kDatabaseMeta | (uint64_t{database_} << 32);
  }
  // The id an owner caches a counter of this key under: even for the node's,
  // odd for the database's, so the two never share a cache slot.
  uint64_t cache_id(CounterLevel level) const {
    return id_ + (level == CounterLevel::kDatabase ? 1 : 0);
  }
  size_t host_words() const { return padded_host_.size() / 8; }
  uint64_t host_word(size_t i) const {
    uint64_t word;
    std::memcpy(&word, padded_host_.data() + 8 * i, sizeof(word));
    return word;
  }
  uint64_t node_meta() const { return uint64_t{port_} | (uint64_t{host_len_} << 16); }
  // Unique within the process for each key made by Create, and even;
  // copies share it. Owners cache "this key lives in that entry" under it
  // (owner.h, and cache_id above).
  uint64_t id() const { return id_; }

  std::string padded_host_;  // the host, zero-padded to a multiple of 8 bytes
  uint16_t host_len_;
  uint16_t port_;
  uint32_t database_;
  uint64_t hash_;
  uint64_t node_hash_;
  uint64_t id_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_NODE_KEY_H_
