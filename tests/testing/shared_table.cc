#include "tests/testing/shared_table.h"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>

namespace connthrottle::testing {

SharedTable::SharedTable(TableOptions options) {
  absl::StatusOr<size_t> size = CounterTable::RequiredBytes(options);
  if (!size.ok()) {
    std::fprintf(stderr, "SharedTable: %s\n", size.status().ToString().c_str());
    std::abort();
  }
  size_ = *size;
  region_ = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (region_ == MAP_FAILED) {
    std::perror("SharedTable: mmap");
    std::abort();
  }
  absl::StatusOr<CounterTable> table = CounterTable::Initialize(region_, size_, options);
  if (!table.ok()) {
    std::fprintf(stderr, "SharedTable: %s\n", table.status().ToString().c_str());
    std::abort();
  }
  table_.emplace(*table);
}

SharedTable::~SharedTable() { munmap(region_, size_); }

}  // namespace connthrottle::testing
