// shared_pool.cc — SharedPool's interface to its sessions (submit, await,
// cancel, figures) and the transport that feeds it. The loop that serves
// the tasks is in pool_loop.h and the pool_*.cc files beside it.

#include "connthrottle/executor/shared_pool.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <mutex>
#include <utility>

#include "absl/time/clock.h"
#include "executor/pool_loop.h"

namespace connthrottle {

void SettleTask(SharedPool::Batch& b, int t, TaskResult result, int64_t bytes) {
  result.node = b.tasks[t].node;
  bool last;
  {
    std::lock_guard<std::mutex> lock(b.mu);
    b.results[t] = std::move(result);
    b.held_bytes += bytes;
    --b.remaining;
    last = b.Settled();
  }
  if (last) b.Notify();
}

void FailTask(SharedPool::Batch& b, int t, absl::Status status, const char* sqlstate) {
  TaskResult r;
  r.status = std::move(status);
  r.sqlstate = sqlstate;
  SettleTask(b, t, std::move(r));
}

// ---- SharedPool ----

SharedPool::SharedPool(Owner& owner, LimitFunction limit, SharedPoolOptions options)
    : SharedPool(owner, std::move(limit), options, ExternalWork{}) {}

SharedPool::SharedPool(Owner& owner, LimitFunction limit, SharedPoolOptions options,
                       ExternalWork external)
    : owner_(owner),
      limit_(std::move(limit)),
      options_(options),
      // Both or neither (shared_pool.h): one without the other is none.
      external_(external.fd >= 0 && external.serve ? std::move(external) : ExternalWork{}) {
  // Without it (no file descriptor left) the loop polls for new work every
  // few milliseconds instead of being woken.
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  loop_ = std::make_unique<Loop>(*this);
  thread_ = std::thread([this] { loop_->Run(); });
}

SharedPool::~SharedPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  Wake();
  thread_.join();
  loop_.reset();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void SharedPool::Wake() {
  // Inside ExternalWork::serve the loop takes its inbox right after.
  if (wake_fd_ < 0 || ServingOnLoopThread(*this)) return;
  const uint64_t one = 1;
  // A full counter (never in practice) still leaves the fd readable.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

SharedPool::Ticket SharedPool::Submit(Submission submission, std::function<void()> on_change) {
  auto b = std::make_shared<Batch>();
  const int n = static_cast<int>(submission.tasks.size());
  b->tasks = std::move(submission.tasks);
  b->params = std::move(submission.params);
  b->local.assign(submission.local.begin(), submission.local.end());
  b->params.resize(n);
  b->local.resize(n, 0);
  b->database_id = submission.database_id;
  b->max_rows_kept = submission.max_rows_kept;
  b->slot_wait_timeout = submission.slot_wait_timeout;
  b->held_total = held_;
  b->on_change = std::move(on_change);
  b->submitted = absl::Now();
  {
    std::lock_guard<std::mutex> lock(b->mu);
    b->results.resize(n);
    for (int t = 0; t < n; ++t) b->results[t].node = b->tasks[t].node;
    b->remaining = n;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      std::lock_guard<std::mutex> batch_lock(b->mu);
      b->pool_gone = true;
      return b;  // the first Poll sees it
    }
    if (n > 0) submitted_.push_back(b);
  }
  Wake();
  return b;
}

namespace {

SharedPool::Progress TakeProgress(SharedPool::Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu) {
  SharedPool::Progress p;
  p.handed_back.swap(b.handed_back);
  p.settled = b.Settled();
  p.pool_gone = b.pool_gone;
  return p;
}

}  // namespace

SharedPool::Progress SharedPool::Poll(const Ticket& ticket) {
  std::lock_guard<std::mutex> lock(ticket->mu);
  return TakeProgress(*ticket);
}

SharedPool::Progress SharedPool::Await(const Ticket& ticket, absl::Duration timeout) {
  Batch& b = *ticket;
  std::unique_lock<std::mutex> lock(b.mu);
  b.changed.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                     [&] { return b.Settled() || !b.handed_back.empty(); });
  return TakeProgress(b);
}

ExecutionResult SharedPool::TakeResults(const Ticket& ticket) {
  ExecutionResult out;
  std::lock_guard<std::mutex> lock(ticket->mu);
  out.tasks = std::move(ticket->results);
  out.stats.tasks_retried = ticket->retried;
  // The results are the session's now.
  if (ticket->held_total) ticket->held_total->fetch_sub(std::exchange(ticket->held_bytes, 0));
  return out;
}

void SharedPool::Cancel(const Ticket& ticket) {
  ticket->cancelled.store(true);
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.push_back(ticket);
  }
  Wake();
}

// ---- COPY ----

SharedPool::CopyTicket SharedPool::OpenCopy(CopyRequest request, std::function<void()> on_change) {
  auto copy = std::make_shared<Copy>();
  const size_t n = request.nodes.size();
  request.params.resize(n);
  request.local.resize(n, false);
  copy->request = std::move(request);
  copy->on_change = std::move(on_change);
  copy->submitted = absl::Now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      std::lock_guard<std::mutex> copy_lock(copy->mu);
      copy->over = true;
      copy->status = absl::UnavailableError("the connthrottle shared pool shut down");
      copy->sqlstate = "08006";
      copy->done = copy->asked;
      return copy;
    }
    copies_.push_back(copy);
  }
  Wake();
  return copy;
}

namespace {

// Asks for the COPY's next step, if the last is done and it is not over.
absl::Status AskStep(SharedPool::Copy& copy, std::vector<SharedPool::CopyPart> chunk, bool finish)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(copy.mu) {
  if (copy.over) {
    // Failed meanwhile (between two steps): its own error.
    return copy.status.ok() ? absl::FailedPreconditionError("the COPY is over") : copy.status;
  }
  // One step may wait behind Open (the first chunk sent with the open).
  const bool behind_open = copy.asked == 1 && copy.done == 0;
  if (copy.done != copy.asked && !behind_open) {
    return absl::FailedPreconditionError("the COPY's last step is not done");
  }
  ++copy.asked;
  copy.chunk = std::move(chunk);
  copy.finish_asked = finish;
  return absl::OkStatus();
}

SharedPool::CopyProgress TakeCopyProgress(SharedPool::Copy& copy)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(copy.mu) {
  SharedPool::CopyProgress p;
  p.done = copy.done == copy.asked;
  p.status = copy.status;
  p.sqlstate = copy.sqlstate;
  p.results = std::move(copy.results);
  return p;
}

}  // namespace

absl::Status SharedPool::SendCopy(const CopyTicket& ticket, std::vector<CopyPart> chunk) {
  return QueueCopyStep(ticket, std::move(chunk), /*finish=*/false);
}

absl::Status SharedPool::FinishCopy(const CopyTicket& ticket, std::vector<CopyPart> last) {
  return QueueCopyStep(ticket, std::move(last), /*finish=*/true);
}

absl::Status SharedPool::QueueCopyStep(const CopyTicket& ticket, std::vector<CopyPart> chunk,
                                       bool finish) {
  {
    std::lock_guard<std::mutex> lock(ticket->mu);
    if (absl::Status s = AskStep(*ticket, std::move(chunk), finish); !s.ok()) return s;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    copies_.push_back(ticket);
  }
  Wake();
  return absl::OkStatus();
}

SharedPool::CopyProgress SharedPool::PollCopy(const CopyTicket& ticket) {
  std::lock_guard<std::mutex> lock(ticket->mu);
  return TakeCopyProgress(*ticket);
}

SharedPool::CopyProgress SharedPool::AwaitCopy(const CopyTicket& ticket, absl::Duration timeout) {
  Copy& copy = *ticket;
  std::unique_lock<std::mutex> lock(copy.mu);
  copy.changed.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return copy.done == copy.asked; });
  return TakeCopyProgress(copy);
}

void SharedPool::CancelCopy(const CopyTicket& ticket) {
  ticket->cancelled.store(true);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    copies_.push_back(ticket);
  }
  Wake();
}

void SharedPool::set_options(const SharedPoolOptions& options) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    options_ = options;
    ++options_version_;
  }
  Wake();
}

SharedPoolStats SharedPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::map<NodeAddress, int> SharedPool::Connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connections_;
}

std::map<NodeAddress, int> SharedPool::Queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

std::map<NodeAddress, int> SharedPool::Idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return idle_;
}

// ---- SharedPoolTransport ----

SharedPoolTransport::SharedPoolTransport(SharedPool& pool, ExecutionContext& context,
                                         Options options)
    : pool_(pool), context_(context), options_(options) {}

absl::StatusOr<ExecutionResult> SharedPoolTransport::Execute(std::vector<Task> tasks) {
  if (tasks.empty()) return ExecutionResult{};
  SharedPool::Submission submission;
  submission.database_id = context_.DatabaseId();
  submission.max_rows_kept = options_.max_rows_kept;
  submission.slot_wait_timeout = options_.slot_wait_timeout;
  for (const Task& task : tasks) {
    submission.params.push_back(context_.ParamsFor(task.node));
    submission.local.push_back(context_.IsLocal(task.node));
  }
  submission.tasks = tasks;
  const absl::Time submitted = absl::Now();
  SharedPool::Ticket ticket = pool_.Submit(std::move(submission));

  std::map<int, TaskResult> ran_locally;
  while (true) {
    SharedPool::Progress p = pool_.Await(ticket, options_.tick);
    if (p.pool_gone) return absl::UnavailableError("the connthrottle shared pool shut down");
    // Local failover: tasks the local node's pool could not connect for.
    for (int t : p.handed_back) ran_locally[t] = RunHandedBack(context_, tasks[t], submitted);
    if (p.settled) break;  // taken with the hand-backs: no more can come
    if (context_.Interrupted()) {
      pool_.Cancel(ticket);
      return absl::CancelledError("the execution was cancelled");
    }
  }
  ExecutionResult out = pool_.TakeResults(ticket);
  for (auto& [t, r] : ran_locally) out.tasks[t] = std::move(r);
  out.stats.tasks_run_locally = static_cast<int>(ran_locally.size());
  return out;
}

}  // namespace connthrottle
