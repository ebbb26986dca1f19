// Takes and gives back a slot through the installed library, and runs a task
// through the installed executor against a port nobody listens on (no server
// needed: the task must fail naming the node, its slot given back).
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "connthrottle/counter_table.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/owner.h"

int main() {
  using namespace connthrottle;
  TableOptions options;
  options.capacity = 8;
  options.max_owners = 2;
  size_t bytes = *CounterTable::RequiredBytes(options);
  void* region = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  CounterTable table = *CounterTable::Initialize(region, bytes, options);
  {
    std::unique_ptr<Owner> owner = *table.RegisterOwner();
    NodeKey key = *NodeKey::Create("worker-1", 5432, 1);
    absl::StatusOr<Slot> slot = owner->TryAcquire(key, Limit::AtMost(1));
    absl::StatusOr<Slot> refused = owner->TryAcquire(key, Limit::AtMost(1));
    if (!slot.ok() || refused.ok() || table.ConnectionCount(key) != 1) return 1;
  }
  {
    std::unique_ptr<Owner> owner = *table.RegisterOwner();
    StandaloneContext context({});
    AdaptiveExecutor executor(*owner, context);
    absl::StatusOr<ExecutionResult> r = executor.Execute({Task{{"127.0.0.1", 1}, "SELECT 1"}});
    if (!r.ok() || r->tasks.size() != 1 || r->tasks[0].status.ok()) return 2;
    if (table.ConnectionCount(*NodeKey::Create("127.0.0.1", 1, 1)) != 0) return 3;
  }
  std::printf("consumer: ok\n");
  std::free(region);
  return 0;
}
