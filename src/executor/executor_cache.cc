// executor_cache.cc — the connections an AdaptiveExecutor keeps between
// executions: taken back (if still alive and young), kept (parked: only
// while the node has no waiters and a slot to spare), closed on demand.

#include "absl/time/clock.h"
#include "connthrottle/executor/executor.h"
#include "executor/libpq_conn.h"

namespace connthrottle {

using Connection = AdaptiveExecutor::Connection;
using State = AdaptiveExecutor::Connection::State;

std::unique_ptr<AdaptiveExecutor::Connection> AdaptiveExecutor::TakeCached(const NodeAddress& node,
                                                                           int* discarded) {
  auto it = cache_.find(node);
  if (it == cache_.end()) return nullptr;
  std::vector<std::unique_ptr<Connection>>& cached = it->second;
  std::vector<std::unique_ptr<Connection>> dead;
  std::unique_ptr<Connection> found;
  const absl::Time now = absl::Now();
  while (!cached.empty() && found == nullptr) {
    std::unique_ptr<Connection> c = std::move(cached.back());
    cached.pop_back();
    if (IdleConnectionIsDead(c->pg) || now - c->ready >= options_.max_cached_lifetime) {
      if (IdleConnectionIsDead(c->pg)) ++*discarded;
      c->state = IdleConnectionIsDead(c->pg) ? State::kBroken : State::kIdle;
      dead.push_back(std::move(c));
    } else {
      owner_.Unpark(c->slot);
      found = std::move(c);
    }
  }
  if (cached.empty()) cache_.erase(it);
  if (!dead.empty()) CloseAll(std::move(dead));
  return found;
}

std::unique_ptr<AdaptiveExecutor::Connection> AdaptiveExecutor::Cache(
    std::unique_ptr<Connection> c) {
  if (c->state != State::kIdle || IdleConnectionIsDead(c->pg) ||
      absl::Now() - c->ready >= options_.max_cached_lifetime ||
      CachedConnections(c->node) >= options_.max_cached_per_node) {
    return c;
  }
  // Parked: the key has no waiters and idle caches keep a slot to spare.
  if (!owner_.Park(c->slot, context_.LimitFor(c->node, context_.IsLocal(c->node)))) return c;
  c->reused = false;
  cache_[c->node].push_back(std::move(c));
  return nullptr;
}

int AdaptiveExecutor::CloseIdle() {
  std::vector<std::unique_ptr<Connection>> closing;
  for (auto& [node, conns] : cache_) {
    for (auto& c : conns) closing.push_back(std::move(c));
  }
  cache_.clear();
  int n = static_cast<int>(closing.size());
  CloseAll(std::move(closing));
  return n;
}

int AdaptiveExecutor::CloseIdle(const NodeAddress& node) {
  auto it = cache_.find(node);
  if (it == cache_.end()) return 0;
  int n = static_cast<int>(it->second.size());
  CloseAll(std::move(it->second));
  cache_.erase(it);
  return n;
}

int AdaptiveExecutor::CachedConnections(const NodeAddress& node) const {
  auto it = cache_.find(node);
  return it == cache_.end() ? 0 : static_cast<int>(it->second.size());
}

std::map<NodeAddress, int> AdaptiveExecutor::CachedConnections() const {
  std::map<NodeAddress, int> out;
  for (const auto& [node, conns] : cache_) out[node] = static_cast<int>(conns.size());
  return out;
}

}  // namespace connthrottle
