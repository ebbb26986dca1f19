// connthrottle/copy_stream.h — streaming rows to several nodes with
// COPY ... FROM STDIN, COPY-style: a slot for every target node is reserved up
// front, in the global node order, and a node's connection is opened only
// when the first row for it arrives, consuming its reservation without
// counting again. Unused reservations are given back at the end.
//
//   auto copy = CopyStream::Begin(executor, nodes, "COPY t FROM STDIN", deadline, interrupted);
//   copy->Send(i, "42\tforty-two\n");   // COPY text format, one row per call
//   auto results = copy->Finish();       // rows per node, each node's outcome
//
// Nodes the session already has an idle cached connection to need no
// reservation: that connection is used. Connections go back to the
// executor's cache afterwards (or are closed, as for Execute).
//
// Not thread-safe; it borrows the executor, which must outlive it and must
// not Execute while a CopyStream is open.

#ifndef CONNTHROTTLE_EXECUTOR_COPY_STREAM_H_
#define CONNTHROTTLE_EXECUTOR_COPY_STREAM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/reservation_ledger.h"

namespace connthrottle {

class CopyStream {
 public:
  // Reserves a slot for each of `nodes` (waiting until `deadline`; Cancelled
  // when `interrupted` says so), after giving back the session's other idle
  // cached connections. All or nothing. InvalidArgument when a node is given
  // more than once. `wait_began` resumes a wait an
  // earlier call gave up with Cancelled (see AcquireOptions::wait_began).
  static absl::StatusOr<std::unique_ptr<CopyStream>> Begin(
      AdaptiveExecutor& executor, std::vector<NodeAddress> nodes, std::string copy_sql,
      absl::Time deadline, absl::FunctionRef<bool()> interrupted,
      std::optional<absl::Time> wait_began = std::nullopt);
  CopyStream(const CopyStream&) = delete;
  CopyStream& operator=(const CopyStream&) = delete;
  // Without Finish: ends every open COPY with an error (the workers roll it
  // back) and gives back every slot and reservation.
  ~CopyStream();

  // Sends one row, in COPY text format ending with '\n', to nodes[node].
  // The first row for a node opens its connection. An error names the node;
  // after one, rows for that node are refused and Finish reports it.
  absl::Status Send(size_t node, std::string_view row);

  struct NodeResult {
    NodeAddress node;
    uint64_t rows_sent = 0;
    bool connected = false;  // a row arrived, so a connection was opened
    absl::Status status;     // the node's COPY outcome
    std::string command_tag;
  };
  // Ends COPY on every node that got rows and reports each node.
  absl::StatusOr<std::vector<NodeResult>> Finish();

  const std::vector<NodeAddress>& nodes() const { return nodes_; }

  // Makes Send and Finish, which wait on the workers' sockets without
  // blocking, look at `interrupted` at least every 10 ms and return
  // Cancelled when it says so (the stream must then be destroyed, which
  // cancels the workers' COPY). Without one, they wait as long as it takes.
  void set_interrupt(std::function<bool()> interrupted) { interrupted_ = std::move(interrupted); }

 private:
  struct Target;
  CopyStream(AdaptiveExecutor& executor, std::vector<NodeAddress> nodes, std::string copy_sql);
  absl::Status Connect(Target& target);
  absl::Status Open(Target& target);

  AdaptiveExecutor& executor_;
  std::vector<NodeAddress> nodes_;
  std::string copy_sql_;
  ReservationLedger ledger_;
  std::vector<std::unique_ptr<Target>> targets_;
  bool finished_ = false;
  std::function<bool()> interrupted_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_EXECUTOR_COPY_STREAM_H_
