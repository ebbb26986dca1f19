// The fixture of executor_test (tests/executor_*_test.cc): the adaptive
// executor (C++) against real PostgreSQL 15 workers. Results per task, the
// strict limit as the workers themselves see it (pg_stat_activity), optional
// connections refused and picked up later, slow start, connection reuse
// across executions, local-execution failover, COPY with reservations, a
// worker that stops mid-run, a cached connection the worker killed, cancel,
// fairness between sessions competing for few slots, and a refused node.
//
// Two workers are started once for the whole binary and shared (one
// ExecutorTest suite, whichever file its cases are in); every case has its
// own CounterTable (a heap table, or a named shared segment for the fairness
// case), so counters start at zero, and ends with every key's count at zero
// once its executors are gone, a clean Audit(), and no coordinator backend
// left on the workers.
//
// Cases synchronise only by polling conditions with deadlines. The figures
// they measure (peaks, connections opened, timings, fairness) are printed for
// a person to read in `ctest -V`; timing assertions are only liveness bounds.

#ifndef CONNTHROTTLE_TESTS_TESTING_EXECUTOR_FIXTURE_H_
#define CONNTHROTTLE_TESTS_TESTING_EXECUTOR_FIXTURE_H_

#include "tests/testing/worker_pair.h"

namespace connthrottle::testing {

class ExecutorTest : public WorkerPairTest {};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_EXECUTOR_FIXTURE_H_
