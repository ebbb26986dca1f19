// The workload, whichever kind of client runs it: the operations of --mix
// (fan-out, router, COPY), drawn by weight, the SQL of their tasks on the
// workers' shard table, and what counts as a "too many clients" error.

#ifndef CONNTHROTTLE_BENCH_STRESS_WORKLOAD_H_
#define CONNTHROTTLE_BENCH_STRESS_WORKLOAD_H_

#include <cstddef>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "stress/options.h"

namespace connthrottle::stress {

enum class Op { kFanout, kRouter, kCopy };

// What one operation came to.
const char* OpName(Op op);

// The operations of --mix, with their weights.
struct Mix {
  std::vector<std::pair<Op, int>> weights;
  int total = 0;

  // Dies on a bad mix; in library mode copy is left out (COPY is exercised
  // through the extension).
  static Mix Parse(const std::string& text, bool library);

  // An operation drawn by weight.
  Op Pick(std::mt19937_64& rng) const;
};

// The key of an operation: a row of the shard table, drawn from `rng`.
int RandomKey(std::mt19937_64& rng);

// One task of an operation: `worker` (an index into the cluster's workers)
// runs `sql`.
struct WorkerTask {
  size_t worker = 0;
  std::string sql;
};

// The tasks of `op` keyed `key` on `workers` workers: a fan-out runs
// --tasks_per_worker tasks (--fanout_task) on every worker; a router, one
// lookup on a worker drawn from `rng`; a COPY (distribute) sends rows to
// every worker and runs no SQL of its own there.
std::vector<WorkerTask> OperationTasks(const Options& options, Op op, int key, size_t workers,
                                       std::mt19937_64& rng);

// Whether an error is a server's "too many clients" (SQLSTATE 53300 or its
// words, which errors passed on as text keep).
bool TooManyClients(const std::string& sqlstate, const std::string& message);

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_WORKLOAD_H_
