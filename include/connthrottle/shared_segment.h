// connthrottle/shared_segment.h — a CounterTable in a named POSIX shared
// memory segment, for standalone programs with no PostgreSQL around them.
//
// Any process of the same user creates or attaches the segment by name and
// gets the same throttling the extension gives backends. The segment is
// created with mode 0600, fully initialised under a temporary name and then
// linked to its real name, so an attacher never sees a half-made table.
// Tables in segments reclaim the slots of processes that die (see owner.h).
//
// Attaching refuses, with a clear error:
//   PermissionDenied    a segment owned by another user, or not mode 0600;
//   FailedPrecondition  a segment of another layout version, a different
//                       capacity or max_owners than requested, or no table.
//
// A SharedSegment object is the mapping: move it around by unique_ptr; the
// table is valid while the object lives. Thread-safe like CounterTable.
// Segments live in /dev/shm (Linux).

#ifndef CONNTHROTTLE_SHARED_SEGMENT_H_
#define CONNTHROTTLE_SHARED_SEGMENT_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "connthrottle/counter_table.h"

namespace connthrottle {

class SharedSegment {
 public:
  // Names are 1..200 characters of [A-Za-z0-9._-], not starting with '.'.
  static absl::Status ValidateName(std::string_view name);

  // Attaches the segment `name`, creating it with a new table laid out for
  // `options` if it does not exist. reclaim_dead_owners is forced on.
  static absl::StatusOr<std::unique_ptr<SharedSegment>> CreateOrAttach(std::string_view name,
                                                                       const TableOptions& options);

  // Attaches an existing segment; NotFound when there is none.
  static absl::StatusOr<std::unique_ptr<SharedSegment>> Attach(std::string_view name);

  // Removes the name; processes attached keep their mapping. NotFound when
  // there is no such segment.
  static absl::Status Remove(std::string_view name);

  SharedSegment(const SharedSegment&) = delete;
  SharedSegment& operator=(const SharedSegment&) = delete;
  ~SharedSegment();

  CounterTable table() const { return table_; }
  const std::string& name() const { return name_; }
  // Whether this call created the segment (false: it attached one).
  bool created() const { return created_; }
  size_t size() const { return size_; }

 private:
  // Opens and maps an existing segment after checking who owns it and, when
  // `expected` is given, that its table was laid out for those options.
  static absl::StatusOr<std::unique_ptr<SharedSegment>> OpenExisting(std::string_view name,
                                                                     const TableOptions* expected);

  SharedSegment(std::string name, void* base, size_t size, CounterTable table, bool created)
      : name_(std::move(name)), base_(base), size_(size), table_(table), created_(created) {}

  std::string name_;
  void* base_;
  size_t size_;
  CounterTable table_;
  bool created_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SHARED_SEGMENT_H_
