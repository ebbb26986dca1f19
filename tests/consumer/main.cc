// Takes and gives back a slot through the installed library.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "connthrottle/counter_table.h"
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
  std::printf("consumer: ok\n");
  std::free(region);
  return 0;
}
