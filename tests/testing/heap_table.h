// Test helper: a CounterTable in plain, suitably aligned heap memory.

#ifndef CONNTHROTTLE_TESTS_TESTING_HEAP_TABLE_H_
#define CONNTHROTTLE_TESTS_TESTING_HEAP_TABLE_H_

#include <cstddef>
#include <memory>

#include "connthrottle/counter_table.h"
#include "connthrottle/node_key.h"

namespace connthrottle::testing {

class HeapTable {
 public:
  explicit HeapTable(TableOptions options = {});
  HeapTable(const HeapTable&) = delete;
  HeapTable& operator=(const HeapTable&) = delete;
  ~HeapTable();

  CounterTable& table() { return table_; }
  CounterTable* operator->() { return &table_; }
  void* region() const { return region_; }
  size_t size() const { return size_; }

 private:
  static CounterTable Make(const TableOptions& options, void** region, size_t* size);

  void* region_ = nullptr;
  size_t size_ = 0;
  CounterTable table_;
};

// NodeKey::Create that must succeed.
NodeKey Key(std::string_view host, int port = 5432, uint32_t database = 1);

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_HEAP_TABLE_H_
