#include "tests/testing/heap_table.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace connthrottle::testing {

CounterTable HeapTable::Make(const TableOptions& options, void** region, size_t* size) {
  absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes(options);
  if (!bytes.ok()) {
    ADD_FAILURE() << bytes.status();
    std::abort();
  }
  *size = *bytes;
  *region = std::aligned_alloc(64, (*bytes + 63) / 64 * 64);
  absl::StatusOr<CounterTable> table = CounterTable::Initialize(*region, *size, options);
  if (!table.ok()) {
    ADD_FAILURE() << table.status();
    std::abort();
  }
  return *table;
}

HeapTable::HeapTable(TableOptions options) : table_(Make(options, &region_, &size_)) {}

HeapTable::~HeapTable() { std::free(region_); }

NodeKey Key(std::string_view host, int port, uint32_t database) {
  absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
  if (!key.ok()) {
    ADD_FAILURE() << key.status();
    std::abort();
  }
  return *key;
}

}  // namespace connthrottle::testing
