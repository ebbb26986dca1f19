// pool_sharing.cc — the shared pool's loop: sharing a node's slots: between pools of a node, with
// the node's other waiters, within a lowered limit. See pool_loop.h for the loop's state and who
// owns it.

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "connthrottle/counter_table.h"
#include "executor/pool_loop.h"

namespace connthrottle {

// Pools of one node (its databases, roles and connection parameters) take
// slots from one counter. With k of them
// busy, a pool's fair share is limit / k connections (at least one, at
// most its cap). While a pool with queued tasks is below its share,
// no pool grows beyond the share, and the pools above limit / k close one connection each as a
// task ends (`surplus`), its slot going to the pool furthest below its share (Reap). Idle
// connections of pools with nothing queued go at once, slot and all, to any pool refused a slot,
// below its share or not: a slot that serves nobody is wasted.
void SharedPool::Loop::Rebalance() {
  if (regroup) Regroup();
  for (const std::vector<Pool*>& group : shared_keys) {
    for (Pool* p : group) {
      p->surplus = 0;
      p->surplus_to = nullptr;
      p->share = std::numeric_limits<int>::max();
    }
    const Limit limit = sp.limit_(group.front()->node, group.front()->local);
    if (limit.unlimited()) continue;
    const int busy = static_cast<int>(
        std::count_if(group.begin(), group.end(), [](const Pool* p) { return Busy(*p); }));
    if (busy == 0) continue;
    const int fair = static_cast<int>(limit.max()) / busy;
    const int share = std::min(std::max(fair, 1), options.max_pool_size);
    // The pool with queued tasks furthest below its share; one at its
    // database's bound only if no other is below its share (it can take a
    // slot from a pool of its own database only, below).
    Pool* neediest = nullptr;
    Pool* neediest_at_bound = nullptr;
    int neediest_live = share, neediest_at_bound_live = share;
    for (Pool* p : group) {
      const int live = LiveConnections(*p);
      if (p->queued > 0 && AtDatabaseBound(*p, limit)) {
        if (live < neediest_at_bound_live) {
          neediest_at_bound = p;
          neediest_at_bound_live = live;
        }
      } else if (p->queued > 0 && live < neediest_live) {
        neediest = p;
        neediest_live = live;
      }
      if (!p->wants_slot || live >= options.max_pool_size) continue;
      if (copy_waiting_keys.contains(p->key_name)) continue;  // the COPY has it first
      // Refused for its database's bound, only an idle connection of the
      // same database makes room for it.
      if (Conn* idle = LongestIdle(group, p, AtDatabaseBound(*p, limit))) {
        Close(*idle, CloseReason::kForPool, p);
        p->wants_slot = false;  // one per refusal: asked again if still refused
      }
    }
    for (Pool* p : group) Reap(*p);
    const bool same_database = neediest == nullptr;
    if (same_database) neediest = neediest_at_bound;
    if (neediest == nullptr) continue;
    // One connection at a time from the pool that has most to the
    // neediest, while that levels them (a difference of two or more) and
    // the neediest is below its share: the node's other holders (direct
    // sessions, COPY) may leave the pools less than limit / k each, and
    // a handed-over slot costs a new connection, so no more moves than
    // that.
    int needy = LiveConnections(*neediest);
    for (Pool* p : group) p->share = share;
    while (needy < share) {
      Pool* donor = nullptr;
      int most = needy + 1;
      for (Pool* p : group) {
        const int left = LiveConnections(*p) - p->surplus;
        if (same_database && p->key->database() != neediest->key->database()) continue;
        if (p != neediest && left > most) {
          donor = p;
          most = left;
        }
      }
      if (donor == nullptr) break;
      ++donor->surplus;
      donor->surplus_to = neediest;
      ++needy;
    }
  }
}

// The pools that share a key with others, by key; made again only when
// pools come or go (a pool's address in `pools` is stable).
void SharedPool::Loop::Regroup() {
  regroup = false;
  absl::flat_hash_map<absl::string_view, std::vector<Pool*>> by_key;
  for (auto& [name, pool] : pools) by_key[pool.key_name].push_back(&pool);
  shared_keys.clear();
  for (auto& [key, group] : by_key) {
    if (group.size() > 1) shared_keys.push_back(std::move(group));
  }
}

bool SharedPool::Loop::Busy(const Pool& pool) {
  if (pool.queued > 0 || pool.wants_slot) return true;
  return std::any_of(pool.conns.begin(), pool.conns.end(),
                     [](const auto& conn) { return conn->c->state == State::kBusy; });
}

// The connection that has been idle longest in the pools of `group` with
// nothing queued, `except` aside; null if none.
SharedPool::Loop::Conn* SharedPool::Loop::LongestIdle(const std::vector<Pool*>& group,
                                                      const Pool* except, bool same_database) {
  Conn* best = nullptr;
  for (Pool* p : group) {
    // Its queued tasks take its idle connections in this turn.
    if (p == except || p->queued > 0) continue;
    if (same_database && p->key->database() != except->key->database()) continue;
    for (auto& conn : p->conns) {
      if (conn->c->state != State::kIdle) continue;
      if (best == nullptr || conn->idle_since < best->idle_since) best = conn.get();
    }
  }
  return best;
}

// How many connections the node has above its limit (the limit was
// lowered): the pool closes that many as they become idle. Forced
// connections are not the pool's to make up for. Slots are given back
// as soon as a pool's closed connections are reaped (each Service), so
// the next pool of the same key sees the count already lowered.
int SharedPool::Loop::OverLimit(const Pool& pool) {
  const Limit limit = sp.limit_(pool.node, pool.local);
  if (limit.unlimited()) return 0;
  auto over = [&](CounterLevel level, const Limit& at) {
    const std::optional<KeyStats> key = sp.owner_.table().LookupCounts(*pool.key, level);
    if (!key) return 0;
    return static_cast<int>(key->connections - key->forced) - static_cast<int>(at.max());
  };
  int n = over(CounterLevel::kNode, limit);
  if (limit.per_database()) n = std::max(n, over(CounterLevel::kDatabase, limit.DatabaseLevel()));
  return n;
}

// Whether `conn`, idle, may run a task of `pool`: a connection opened while
// the per-database bound was off is counted for its database first, or
// closed when the bound has no room (`limit` is read once, by the first
// connection that needs it).
bool SharedPool::Loop::CountedForDatabase(Pool& pool, Conn& conn, std::optional<Limit>& limit) {
  Slot& slot = conn.c->slot;
  if (slot.two_level() || slot.kind() == SlotKind::kUncounted) return true;
  if (!limit) limit = sp.limit_(pool.node, pool.local);
  if (!limit->per_database()) return true;
  AcquireOptions acquire;
  acquire.when_full = options.when_table_full;
  if (sp.owner_.CountForDatabase(slot, *pool.key, *limit, acquire)) return true;
  Close(conn, CloseReason::kOverLimit);
  return false;
}

// Whether the pool's database holds all the slots its per-database bound
// allows (never, with the bound off).
bool SharedPool::Loop::AtDatabaseBound(const Pool& pool, const Limit& limit) {
  if (!limit.per_database()) return false;
  const std::optional<KeyStats> key =
      sp.owner_.table().LookupCounts(*pool.key, CounterLevel::kDatabase);
  return key && key->connections >= limit.DatabaseLevel().max();
}

// Closes up to `n` idle connections for `why`.
void SharedPool::Loop::CloseIdle(Pool& pool, int n, CloseReason why) {
  for (auto& conn : pool.conns) {
    if (n <= 0) break;
    if (conn->c->state != State::kIdle) continue;
    Close(*conn, why);
    --n;
  }
}

void SharedPool::Loop::ShrinkToLimit(Pool& pool) {
  // The per-database bound turned on at reload: an idle connection opened
  // while it was off is counted for its database if the bound admits it,
  // else closed like one over a lowered limit.
  std::optional<Limit> limit;
  for (auto& conn : pool.conns) {
    if (conn->c->state == State::kIdle) CountedForDatabase(pool, *conn, limit);
  }
  CloseIdle(pool, OverLimit(pool), CloseReason::kOverLimit);
}

// How many others queue for a slot of this node (sessions of the direct
// transport, COPY's reservations) that no free slot serves: a slot given
// back a moment ago and not yet taken serves one.
int SharedPool::Loop::UnservedWaiters(const Pool& pool) {
  // The counts first: with nobody waiting (the common case) the limit is
  // not read at all.
  const std::optional<KeyStats> node = sp.owner_.table().LookupCounts(*pool.key);
  const std::optional<KeyStats> db =
      sp.owner_.table().LookupCounts(*pool.key, CounterLevel::kDatabase);
  if ((!node || node->waiters == 0) && (!db || db->waiters == 0)) return 0;
  const Limit limit = sp.limit_(pool.node, pool.local);
  if (limit.unlimited()) return 0;
  auto unserved = [](const std::optional<KeyStats>& key, const Limit& at) {
    if (!key || key->waiters == 0) return 0;
    const int free = std::max(0, static_cast<int>(at.max()) - static_cast<int>(key->connections));
    return std::max(0, static_cast<int>(key->waiters) - free);
  };
  int n = unserved(node, limit);
  // Waiters for the pool's own database are served only by its connections.
  if (limit.per_database()) n = std::max(n, unserved(db, limit.DatabaseLevel()));
  return n;
}

// While others wait for the node, the pool gives back one idle connection
// per unserved waiter: it can open one again later, a waiter cannot run
// until it gets a slot.
void SharedPool::Loop::YieldToWaiters(Pool& pool) {
  if (std::none_of(pool.conns.begin(), pool.conns.end(),
                   [](const auto& conn) { return conn->c->state == State::kIdle; })) {
    return;
  }
  CloseIdle(pool, UnservedWaiters(pool), CloseReason::kForWaiters);
}

}  // namespace connthrottle
