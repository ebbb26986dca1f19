// Test helper: a CounterTable in an anonymous MAP_SHARED mapping, so that the
// processes a test forks work on the parent's table (HeapTable's memory would
// be copied into each child instead). Unmapped when destroyed; not movable.

#ifndef CONNTHROTTLE_TESTS_TESTING_SHARED_TABLE_H_
#define CONNTHROTTLE_TESTS_TESTING_SHARED_TABLE_H_

#include <cstddef>
#include <optional>

#include "connthrottle/counter_table.h"

namespace connthrottle::testing {

class SharedTable {
 public:
  explicit SharedTable(TableOptions options);
  SharedTable(const SharedTable&) = delete;
  SharedTable& operator=(const SharedTable&) = delete;
  ~SharedTable();

  CounterTable& table() { return *table_; }
  CounterTable* operator->() { return &*table_; }
  // The region's start: the table's header (internal/layout.h).
  void* region() const { return region_; }

 private:
  void* region_ = nullptr;
  size_t size_ = 0;
  std::optional<CounterTable> table_;
};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_SHARED_TABLE_H_
